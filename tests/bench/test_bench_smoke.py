"""The bench harness end to end on tiny inputs: our side only (no peer venvs), the tiny NomicBert golden folder for
both the text-in and the ids-in scenarios, results written to a tmp dir. Seconds, not minutes."""

from __future__ import annotations

import json

import pytest

from bench import checkpoint, scenarios
from bench.__main__ import main
from tests.conftest import GOLDEN, NOMIC, has_cxx

TINY = NOMIC / "nomic-text-tiny"
RERANKER = GOLDEN / "rerank" / "bert-cross-encoder-tiny"
ROW_KEYS = {"group", "scenario", "unit", "ours", "peer", "peer_value", "ratio", "better", "params"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    rc = main(["--profile", "smoke", "--no-peers", "--minilm", str(TINY), "--nomic", str(TINY), "--out", str(out),
               "--reranker", str(RERANKER), "--date", "2000-01-01", "--only", "inprocess", "rerank", "nomic",
               "server", "priority", "ort"])
    assert rc == 0
    return out


def test_json_rows_and_machine(run):
    result = json.loads((run / "2000-01-01-cpu.json").read_text())
    assert result["profile"] == "smoke"
    assert {r["group"] for r in result["rows"]} == {"inprocess", "rerank", "nomic", "server", "priority", "ort"}
    for row in result["rows"]:
        assert set(row) == ROW_KEYS, row["scenario"]
        assert isinstance(row["scenario"], str) and isinstance(row["unit"], str)
        assert row["ours"] is not None and row["ours"] > 0, row["scenario"]
        assert row["peer_value"] is None and row["ratio"] is None  # --no-peers
    m = result["machine"]
    for key in ("cpu_model", "cores", "has_amx", "dtype", "versions", "loadavg_start", "loadavg_end"):
        assert key in m, key
    assert m["dtype"] == "float32" and m["cores"] >= 1 and m["versions"]["torch"]
    assert {t["target"] for t in result["targets"]} >= {"single short request, idle server: p50 ms"}
    idle = next(t for t in result["targets"] if "idle" in t["target"])
    assert idle["value"] is not None and idle["met"] in (True, False)  # ours alone is enough for this one
    scenarios_seen = " ".join(r["scenario"] for r in result["rows"])
    for needle in ("in-process", "tokens/s", "MFU", "matmul peak", "p50", "p99", "c=4", "idle", "rerank", "pairs/s",
                   "query behind 3 bulk requests", "HTTP floor: a no-op uvicorn app"):
        assert needle in scenarios_seen, needle
    idle_ort = next(r for r in result["rows"] if r["params"].get("metric") == "idle_vs_ort")
    # the no-op app does no work, our cache hit skips only the model: the floor sits below both passes
    assert 0 < idle_ort["params"]["http_floor_p50_ms"] <= idle_ort["ours"]
    # --cpu-aot: the compiled short forward's latency rows and its idle server (skipped without a C++ compiler)
    if has_cxx():
        assert "1 x 16 tok, ours fp32 (--cpu-aot)" in scenarios_seen
    assert any(r["params"].get("metric") == "idle_vs_ort_aot" for r in result["rows"])


def test_markdown_and_plots(run):
    pytest.importorskip("matplotlib")
    md = (run / "2000-01-01-cpu.md").read_text()
    assert "| scenario | unit | ours | peer | peer value | ratio |" in md
    assert "Machine:" in md and "## Targets (issue 12)" in md
    pngs = sorted(p.name for p in run.glob("*.png"))
    assert pngs == ["2000-01-01-cpu-latency-vs-concurrency.png", "2000-01-01-cpu-throughput-vs-batch.png",
                    "2000-01-01-cpu-throughput-vs-seqlen.png"]
    for name in pngs:
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratio_direction():
    rate = scenarios.make_row("g", "s", "tokens/s", 300.0, "peer", 100.0)
    latency = scenarios.make_row("g", "s", "ms", 5.0, "peer", 20.0, better="lower")
    assert rate["ratio"] == pytest.approx(3.0) and latency["ratio"] == pytest.approx(4.0)
    assert scenarios.make_row("g", "s", "ms", 5.0, None, None)["ratio"] is None


def test_padding_fraction_sorted_beats_arrival_order():
    lengths = [8, 256] * 64
    mixed = scenarios.padded_attention_fraction(lengths, 32, hidden=384, layers=6, intermediate=1536)
    ordered = scenarios.padded_attention_fraction(sorted(lengths), 32, hidden=384, layers=6, intermediate=1536)
    assert ordered == pytest.approx(0.0) and mixed > 0.05


def test_random_checkpoint_loads_strictly_in_both_forms(tmp_path):
    from model.encoder import Encoder

    folder = checkpoint.build(config=TINY / "config.json", out=tmp_path / "tiny-random", seed=3)
    enc = Encoder.load(str(folder), device="cpu", dtype="float32")
    vecs = enc.embed(enc.tokenize(["a tiny random model"]))
    assert vecs.shape == (1, 64)
    v5 = json.loads((tmp_path / "tiny-random-hf5" / "config.json").read_text())
    assert v5["hidden_size"] == 64 and v5["rope_parameters"]["rope_theta"] == 1000.0 and v5["hidden_act"] == "silu"
    assert (tmp_path / "tiny-random-hf5" / "model.safetensors").resolve() == folder / "model.safetensors"
    twin = Encoder.load(str(tmp_path / "tiny-random-hf5"), device="cpu", dtype="float32")  # the v5 config form
    assert abs(twin.embed(twin.tokenize(["a tiny random model"])) - vecs).max() < 1e-5
    assert checkpoint.build(config=TINY / "config.json", out=tmp_path / "tiny-random", seed=3) == folder  # cached


def test_ms_marco_sized_cross_encoder_loads_strictly_as_a_reranker(tmp_path):
    from model.encoder import Encoder

    folder = checkpoint.build_cross_encoder(seed=1, out=tmp_path / "ce")
    enc = Encoder.load(str(folder), device="cpu", dtype="float32")  # strict load: every tensor named and shaped
    assert enc.info.kind == "reranker" and enc.info.hidden_size == 384 and enc.info.max_input_tokens == 512
    scores = enc.activate(enc.score(enc.tokenize_pairs("a query", ["one document", "another one"], truncate=True)))
    assert scores.shape == (2,) and abs(scores[0] - scores[1]) > 1e-4  # Identity activation: raw, distinct logits
    assert checkpoint.build_cross_encoder(seed=1, out=tmp_path / "ce") == folder  # cached
