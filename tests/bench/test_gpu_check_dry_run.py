"""bench/gpu_check.sh, the one device call of issue 23, dry-run on this CPU: the same script and the same GPU scenarios
(bench/gpu.py) on the tiny NomicBert, our side only, results in a tmp $OUT. What a device session gets back is checked
here first: the file set (within the device tool's 8 files), every GPU row, the targets table and the log."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from bench import gpu, report
from tests.conftest import ROOT


@pytest.mark.slow
def test_the_device_script_dry_run_leaves_the_results_in_out(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PEER_PYTHON": str(tmp_path / "no-peers"), "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--bench-only"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    results = [f for f in files if f.endswith(".json")]
    assert len(results) == 1 and results[0].endswith("-cpu.json"), files
    stem = results[0].removesuffix(".json")
    assert {"gpu-check.log", "bench-logs.txt", f"{stem}.md"} <= set(files) and len(files) <= 8, files
    result = json.loads((out / results[0]).read_text())
    assert {r["group"] for r in result["rows"]} == {"gpu_inprocess", "gpu_forward", "gpu_server"}
    assert all(r["ours"] is not None for r in result["rows"]), [r["scenario"] for r in result["rows"] if not r["ours"]]
    kinds = {r["params"]["kind"] for r in result["rows"] if r["group"] == "gpu_inprocess"}
    assert kinds == {"short", "medium", "long", "max"}
    metrics = {r["params"]["metric"] for r in result["rows"]}
    assert {"forward_tokens_per_s", "gemm_ceiling", "ceiling_share", "padding", "bulk_tokens_per_s",
            "interactive_p99", "idle_p50"} <= metrics
    assert [t["target"] for t in result["targets"]] == [t["target"] for t in gpu.targets(result["rows"])]
    md = (out / f"{stem}.md").read_text()
    assert "## GPU targets (issues 11 and 23)" in md and "## Targets (issue 12)" not in md
    log = (out / "gpu-check.log").read_text()
    assert "device=cpu profile=smoke" in log and "status 0" in log


def test_results_are_named_after_the_gpu():
    machine = {"device": "cuda", "gpu": {"name": "NVIDIA H200"}}
    assert report.results_name(machine) == "h200"
    assert report.results_name(machine | {"gpu": {"name": "NVIDIA H100 80GB HBM3"}}) == "h100"
    assert report.results_name({"device": "cpu", "gpu": None}) == "cpu"


def test_forward_batches_hold_exactly_the_token_budget():
    for p in gpu.PROFILES.values():
        batches = gpu.forward_batches(p)
        assert len(batches) == p.forward_batches
        for batch in batches:
            assert sum(len(s) for s in batch) == p.forward_tokens
            assert all(2 <= len(s) <= p.forward_lengths[1] + 2 for s in batch)
