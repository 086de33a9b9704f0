"""NomicBert MoE (nomic-embed-text-v2-moe) against nomic's own remote code: tests/data/golden/nomic-moe, fp32.

The goldens were made one text at a time; here they are also run packed together with every other length, routed
token by token where the golden records the router's choices (including a near-tie only an fp32 router gets right),
through `Encoder.embed` and `python -m model embed` (the server: tests/app/test_nomic_moe_server.py; from the HF
cache: tests/model/test_weight_formats.py).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.encoder import Encoder
from model.nomic_bert import MoE, expert_runs
from tests.conftest import GOLDEN, load_golden
from tests.model.test_embed_cli import read_jsonl, run_embed

MOE = GOLDEN / "nomic-moe" / "nomic-moe-tiny"
ATOL = 2e-5  # goldens are rounded to 6 decimals
GOLD = load_golden(MOE)
CASES = GOLD["cases"]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load(str(MOE), device="cpu", dtype="float32")


class RouterLog:
    """Records what one MoE layer's router chose (and what it was given) on every forward."""

    def __init__(self, moe: MoE):
        self.inputs: list[torch.Tensor] = []
        self.choices: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handles = [
            moe.router.register_forward_pre_hook(lambda _m, args: self.inputs.append(args[0].detach().clone())),
            moe.router.register_forward_hook(lambda _m, _a, out: self.choices.append(out)),
        ]

    def __enter__(self) -> RouterLog:
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def moe_layer(encoder: Encoder, index: int) -> MoE:
    mlp = encoder.model.encoder.layers[index].mlp
    assert isinstance(mlp, MoE)
    return mlp


def test_layer_i_is_moe_iff_i_mod_n_is_1(encoder):
    assert GOLD["moe_layers"] == [1]
    assert [isinstance(layer.mlp, MoE) for layer in encoder.model.encoder.layers] == [False, True]
    assert len(moe_layer(encoder, 1).experts) == 4 and moe_layer(encoder, 1).router.top_k == 2


def test_text_goldens_alone_and_batched_with_other_lengths(encoder):
    ids = encoder.tokenize([c["text"] for c in CASES])
    assert ids == [c["input_ids"] for c in CASES]  # XLM-R unigram tokenizer, <s> ... </s>
    expected = np.array([c["mean_pooled_l2"] for c in CASES])
    for case, tokens in zip(CASES, ids):  # each text alone, as the goldens were made
        np.testing.assert_allclose(encoder.embed([tokens])[0], case["mean_pooled_l2"], atol=ATOL)
        np.testing.assert_allclose(encoder.embed([tokens], 32)[0], case["matryoshka_32"], atol=ATOL)
    # every length (5 ... 285 tokens) in one packed batch, and in sub-batches of a small token budget
    np.testing.assert_allclose(encoder.embed(ids), expected, atol=ATOL)
    np.testing.assert_allclose(encoder.embed(ids, max_batch_tokens=64), expected, atol=ATOL)
    np.testing.assert_allclose(encoder.embed(ids, 32), [c["matryoshka_32"] for c in CASES], atol=ATOL)


def test_padded_batch_golden(encoder):
    batch = GOLD["padded_batch"]
    ids = [[t for t, m in zip(row, mask) if m] for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    np.testing.assert_allclose(encoder.embed(ids), batch["mean_pooled_l2"], atol=ATOL)


def test_last_hidden_state_and_every_routing_decision(encoder):
    single = GOLD["single"]
    golden = single["router"]["1"]
    with RouterLog(moe_layer(encoder, 1)) as log, torch.inference_mode():
        from model.packing import pack

        hidden = encoder.model(pack([single["input_ids"]]))
    np.testing.assert_allclose(hidden.numpy(), single["last_hidden_state"], atol=ATOL)
    (weights, experts), x = log.choices[0], log.inputs[0]
    assert experts.tolist() == golden["top_experts"]  # the sets *and* torch.topk's order
    np.testing.assert_allclose(weights.numpy(), golden["top_weights"], atol=ATOL)  # not renormalised
    probs = F.linear(x.float(), moe_layer(encoder, 1).router.weight).softmax(-1)
    np.testing.assert_allclose(probs.numpy(), golden["probs"], atol=ATOL)
    assert not np.allclose(weights.sum(-1).numpy(), 1.0, atol=1e-3)


def test_router_near_tie_routes_as_the_reference_when_batched(encoder):
    tie = GOLD["router_tie"]
    ids = [c["input_ids"] for c in CASES]
    start = sum(len(s) for s in ids[: tie["case"]])  # where the tie case's tokens sit in the packed batch
    with RouterLog(moe_layer(encoder, tie["layer"])) as log:
        pooled = encoder.pooled(ids)  # one forward, the batch in case order
    assert len(log.choices) == 1
    weights, experts = log.choices[0]
    token = start + tie["token"]
    assert experts[token].tolist() == tie["top_experts"]
    np.testing.assert_allclose(encoder.finish(pooled)[tie["case"]], CASES[tie["case"]]["mean_pooled_l2"], atol=ATOL)
    # the case is a real tie: bf16 logits on the very same input pick the other expert
    x, w = log.inputs[0][token], moe_layer(encoder, tie["layer"]).router.weight
    bf16_choice = (x.bfloat16() @ w.bfloat16().T).float().softmax(-1).topk(2).indices.tolist()
    assert set(bf16_choice) != set(tie["top_experts"])


def expert_calls(encoder: Encoder, ids: list[list[int]], threads: int) -> tuple[list[tuple], list[int], np.ndarray]:
    """Every expert call of one forward on `threads` threads: (expert, rows, calling thread, its intra-op threads),
    the rows routed to each expert, and the pooled vectors."""
    moe = moe_layer(encoder, 1)
    calls: list[tuple] = []

    def record(e: int, rows: int) -> None:
        calls.append((e, rows, threading.get_ident(), torch.get_num_threads()))

    handles = [
        expert.register_forward_hook(lambda _m, args, _o, e=e: record(e, args[0].shape[0]))
        for e, expert in enumerate(moe.experts)
    ]
    try:
        with RouterLog(moe) as log:
            pooled = encoder.pooled(ids, threads=threads)
    finally:
        for h in handles:
            h.remove()
    return calls, torch.bincount(log.choices[0][1].flatten(), minlength=len(moe.experts)).tolist(), pooled


def test_experts_run_grouped_one_call_each(encoder):
    calls, routed, _ = expert_calls(encoder, [c["input_ids"] for c in CASES], threads=1)
    assert [(e, n) for e, n, *_ in calls] == [(e, n) for e, n in enumerate(routed) if n]  # once, on all its tokens


def test_experts_run_as_single_threaded_tasks_on_two_threads(encoder):
    """On 2 intra-op threads the grouped rows are cut in two equal runs, each on its own single-threaded worker (one
    join per layer, not one per GEMM); an expert on the cut runs as two calls. Same vectors as on 1 thread."""
    ids = [c["input_ids"] for c in CASES]
    calls, routed, pooled = expert_calls(encoder, ids, threads=2)
    assert len({thread for *_, thread, _ in calls}) == 2 and threading.get_ident() not in {c[2] for c in calls}
    assert {n_threads for *_, n_threads in calls} == {1}
    assert [sum(n for e, n, *_ in calls if e == x) for x in range(len(routed))] == routed
    assert len(calls) <= sum(1 for n in routed if n) + 1
    per_thread = {t: sum(n for _, n, u, _ in calls if u == t) for t in {c[2] for c in calls}}
    assert sorted(per_thread.values()) == [sum(routed) // 2, sum(routed) - sum(routed) // 2]
    np.testing.assert_allclose(encoder.finish(pooled), [c["mean_pooled_l2"] for c in CASES], atol=ATOL)
    assert torch.get_num_threads() == 2  # the caller's own count untouched


def test_expert_runs_cut_the_grouped_rows_evenly():
    assert expert_runs([3, 0, 5], 1) == [[(0, 0, 3), (2, 3, 8)]]
    assert expert_runs([100, 0, 60, 40], 2) == [[(0, 0, 100)], [(2, 100, 160), (3, 160, 200)]]
    assert expert_runs([150, 50], 2) == [[(0, 0, 100)], [(0, 100, 150), (1, 150, 200)]]
    assert expert_runs([40, 40], 2) == [[(0, 0, 40), (1, 40, 80)]]  # too few rows to be worth a second worker


def test_bf16_keeps_the_router_in_fp32(encoder):
    bf16 = Encoder.load(str(MOE), device="cpu", dtype="bfloat16")
    router = moe_layer(bf16, 1).router
    assert router.weight.dtype == torch.float32
    assert torch.equal(router.weight, moe_layer(encoder, 1).router.weight)  # never rounded through bf16
    assert moe_layer(bf16, 1).experts[0].fc2(torch.zeros(1, 256, dtype=torch.bfloat16)).dtype == torch.bfloat16
    ids = [c["input_ids"] for c in CASES]
    a, b = bf16.embed(ids), encoder.embed(ids)
    assert (a * b).sum(-1).min() > 0.999


def test_flops_count_the_active_experts(encoder):
    c = encoder.model.config
    dense_mlp = 2 * c.n_embd * 2 * c.n_inner
    per_layer = 2 * c.n_embd * 4 * c.n_embd + 4 * 10 * c.n_embd
    expected = 2 * per_layer + dense_mlp + (2 * c.n_embd * c.num_experts + c.moe_top_k * dense_mlp)
    assert encoder.model.flops_per_token(10) == expected


def test_python_m_model_embed(tmp_path):
    lines = [{"text": c["text"]} if i % 2 == 0 else {"input_ids": c["input_ids"]} for i, c in enumerate(CASES)]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    # a budget of 64 tokens: the short inputs share forwards, the long one runs alone
    args = ["--model", str(MOE), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")]
    result = run_embed(*args, "--device", "cpu", "--batch-tokens", "64")
    assert result.returncode == 0, result.stderr
    out = [o["embedding"] for o in read_jsonl(tmp_path / "out.jsonl")]
    np.testing.assert_allclose(out, [c["mean_pooled_l2"] for c in CASES], atol=ATOL)
