"""The opt-in compiled short CPU forward (model/cpu_aot.py): real AOTInductor packages of real checkpoints, the same
vectors as the eager forward, used only where it covers the batch, kept on disk, and a clean fall-back to eager."""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest
import torch

from model import cpu_aot
from model.encoder import Encoder
from tests.app.conftest import server_process
from tests.conftest import GOLDEN, NOMIC, has_cxx

pytestmark = pytest.mark.skipif(not has_cxx(), reason="AOTInductor needs a C++ compiler")


def ids(n: int, offset: int = 0) -> list[int]:
    return [101] + [2000 + offset + i for i in range(n - 2)] + [102]


@pytest.fixture(scope="module")
def aot_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cpu-aot")


@pytest.fixture(scope="module")
def minilm_aot(minilm_dir, aot_dir):
    return Encoder.load(str(minilm_dir), device="cpu", dtype="float32", cpu_aot_dir=aot_dir)


def count_calls(encoder: Encoder) -> list[int]:
    """Spy on the compiled runner (the real one still runs): how many times it was called."""
    calls, runner = [], encoder._small._runner
    encoder._small._runner = lambda *args: calls.append(1) or runner(*args)
    return calls


def test_compiled_forward_equals_eager_where_it_covers(minilm_aot, minilm):
    assert minilm_aot.cpu_aot_package is not None and minilm_aot.cpu_aot_package.is_file()
    calls = count_calls(minilm_aot)
    for n in (2, 3, 16, cpu_aot.MAX_TOKENS):
        got, want = minilm_aot.embed([ids(n)]), minilm.embed([ids(n)])
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{n} tokens")
    assert len(calls) == 4
    # past the range, several inputs, or token types: the eager forward, as before
    for batch in ([ids(cpu_aot.MAX_TOKENS + 1)], [ids(16), ids(9, 50)], [ids(200)]):
        np.testing.assert_allclose(minilm_aot.embed(batch), minilm.embed(batch), atol=1e-5)
    assert len(calls) == 4


def test_the_package_is_reused_from_disk(minilm_dir, aot_dir, minilm_aot, caplog):
    packages = sorted(aot_dir.glob("*.pt2"))
    with caplog.at_level(logging.INFO, logger="model.cpu_aot"):
        again = Encoder.load(str(minilm_dir), device="cpu", dtype="float32", cpu_aot_dir=aot_dir)
    assert again.cpu_aot_package == minilm_aot.cpu_aot_package
    assert sorted(aot_dir.glob("*.pt2")) == packages  # nothing compiled, no partial file left
    assert "compiled" not in caplog.text
    assert cpu_aot.cache_key(torch.float32, {}) != cpu_aot.cache_key(torch.bfloat16, {})  # one per dtype


def test_nomic_compiles_and_matches(aot_dir):
    folder = str(NOMIC / "nomic-text-tiny")
    compiled = Encoder.load(folder, device="cpu", dtype="float32", cpu_aot_dir=aot_dir)
    eager = Encoder.load(folder, device="cpu", dtype="float32")
    assert compiled.cpu_aot_package is not None
    calls = count_calls(compiled)
    for n in (2, 12, 32):
        batch = [list(range(5, 5 + n))]
        np.testing.assert_allclose(compiled.embed(batch), eager.embed(batch), atol=1e-5)
    assert len(calls) == 3


def test_modernbert_compiles_with_its_sliding_window(aot_dir):
    """The tiny ModernBERT's local layers see 4 positions either way, so inputs past 9 tokens take the band mask: the
    traced graph keeps it at every length (eager drops it when every key is inside the window)."""
    folder = str(GOLDEN / "modernbert" / "modernbert-embed-tiny")
    compiled = Encoder.load(folder, device="cpu", dtype="float32", cpu_aot_dir=aot_dir)
    eager = Encoder.load(folder, device="cpu", dtype="float32")
    assert compiled.cpu_aot_package is not None
    calls = count_calls(compiled)
    for n in (2, 5, 9, 17, 40, 64):
        batch = [list(range(3, 3 + n))]
        np.testing.assert_allclose(compiled.embed(batch), eager.embed(batch), atol=1e-5, err_msg=f"{n} tokens")
    assert len(calls) == 6


def test_a_failed_compile_means_eager(minilm_dir, tmp_path, monkeypatch, minilm, caplog):
    """The compile step raising (no compiler, a full disk: made deterministic here) leaves eager forwards, one warning
    and no partial package behind."""
    import torch._inductor

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Failed to find C++ compiler. Please specify via CXX environment variable.")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiler)
    with caplog.at_level(logging.WARNING, logger="model.cpu_aot"):
        enc = Encoder.load(str(minilm_dir), device="cpu", dtype="float32", cpu_aot_dir=tmp_path)
    assert enc.cpu_aot_package is None
    assert "Failed to find C++ compiler" in caplog.text and "short inputs run eager" in caplog.text
    assert not list(tmp_path.glob("*.pt2"))
    np.testing.assert_allclose(enc.embed([ids(16)]), minilm.embed([ids(16)]), atol=1e-6)


def test_server_flag(minilm_aot, aot_dir, minilm):
    """`--cpu-aot` on a real server: the package compiled above is loaded from `--cpu-aot-dir`, and a short request
    gets the eager forward's vector."""
    with server_process("--cpu-aot", "--cpu-aot-dir", str(aot_dir)) as server:
        body = httpx.post(f"{server.base}/v1/embeddings", json={"input": "a short sentence"}, timeout=30).json()
        assert "compiled" not in server.output()
    want = minilm.embed(minilm.tokenize(["a short sentence"]))[0]
    np.testing.assert_allclose(body["data"][0]["embedding"], want, atol=1e-5)


def test_side_by_side_calls_get_their_own_answers(minilm_aot, minilm):
    """The server's two encoder workers may both run a lone short input at once: each gets its own vector."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [[ids(2 + i % 30, offset=i)] for i in range(64)]
    want = [minilm.embed(b) for b in batches]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda b: minilm_aot.pooled(b, threads=1), batches))
    for g, w, b in zip(got, want, batches):
        np.testing.assert_allclose(minilm_aot.finish(g), w, atol=1e-5, err_msg=f"{len(b[0])} tokens")
