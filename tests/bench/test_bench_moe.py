"""The MoE bench scenario end to end at the fixture's tiny sizes (seconds), and its random checkpoint writer: the same
tensor names and shapes as v2-moe's Hub layout (the nomic-moe fixture), loaded strictly through the real key map."""

from __future__ import annotations

import json

from safetensors import safe_open

from bench import moe
from bench.__main__ import main


def test_random_checkpoint_has_the_hub_layout(tmp_path):
    folder = moe.build(tmp_path / "tiny", seed=1, sizes={})
    with safe_open(moe.FIXTURE / "model.safetensors", "pt") as hub, safe_open(folder / "model.safetensors", "pt") as f:
        assert sorted(f.keys()) == sorted(hub.keys())
        assert all(f.get_slice(k).get_shape() == hub.get_slice(k).get_shape() for k in hub.keys())  # noqa: SIM118
    assert moe.v2_moe_config()["num_experts"] == 8 and moe.v2_moe_config()["vocab_size"] == 250048


def test_moe_scenario_smoke(tmp_path):
    args = ["--profile", "smoke", "--no-peers", "--only", "moe", "--out", str(tmp_path), "--date", "2000-01-01"]
    assert main(args) == 0
    result = json.loads((tmp_path / "2000-01-01-cpu.json").read_text())
    rows = {r["params"]["metric"]: r for r in result["rows"]}
    assert {"peak", "tokens_per_s", "mfu", "moe_vs_dense_ffn", "moe_vs_dense_layer", "expert_kernel"} <= set(rows)
    assert all(r["ours"] > 0 for r in result["rows"])
    ffn = rows["moe_vs_dense_ffn"]["params"]
    assert ffn["time_ratio"] > 0 and sum(ffn["tokens_per_expert"]) == 2 * ffn["tokens"]  # top-2
    assert any("MoE / dense time" in t["target"] for t in result["targets"])
