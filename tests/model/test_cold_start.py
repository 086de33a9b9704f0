"""model/cold_start.py: a small forward that finds the process idle runs on one thread or on all of them, whichever
measured faster on this machine, with the other tried now and then; every other forward keeps the threads it was
given. The forwards here are sleeps of known length, so which mode is faster is known."""

from __future__ import annotations

import time

import numpy as np
import pytest

from model import cold_start
from model.cold_start import ColdStart


@pytest.fixture(autouse=True)
def no_idle_wait(monkeypatch):
    monkeypatch.setattr(cold_start, "IDLE_AFTER_S", 0.0)  # every forward that starts alone counts as cold


def run_cold(cold: ColdStart, one_s: float, all_s: float, threads: int = 2, tokens: int = 16) -> int:
    with cold.threads_for(threads, tokens) as n:
        time.sleep(one_s if n == 1 else all_s)
    return n


@pytest.mark.parametrize(("one_s", "all_s", "faster"), [(0.001, 0.012, 1), (0.012, 0.001, 2)])
def test_cold_small_forwards_settle_on_the_faster_mode_and_keep_trying_the_other(one_s, all_s, faster):
    cold = ColdStart()
    first = [run_cold(cold, one_s, all_s) for _ in range(2 * cold_start.MIN_SAMPLES)]
    assert sorted(first) == [1] * cold_start.MIN_SAMPLES + [2] * cold_start.MIN_SAMPLES  # both modes sampled
    later = [run_cold(cold, one_s, all_s) for _ in range(2 * cold_start.EXPLORE_EVERY)]
    slower = 3 - faster
    assert later.count(slower) == 2  # one exploration every EXPLORE_EVERY
    assert later.count(faster) == len(later) - 2
    summary = cold.summary()
    assert (summary[cold_start.ONE] < summary[cold_start.ALL]) == (faster == 1)


def test_the_choice_follows_a_change_of_machine():
    cold = ColdStart()
    for _ in range(2 * cold_start.MIN_SAMPLES + 1):
        run_cold(cold, 0.001, 0.010)
    assert run_cold(cold, 0.001, 0.010) == 1
    # one thread becomes the slow mode (say the host got busy): the explorations refill its samples until it loses
    chosen = [run_cold(cold, 0.010, 0.001) for _ in range(cold_start.EXPLORE_EVERY * cold_start.SAMPLES)]
    assert chosen[-cold_start.EXPLORE_EVERY :].count(2) >= cold_start.EXPLORE_EVERY - 1  # at most one exploration


def test_warm_large_single_threaded_and_overlapping_forwards_keep_their_threads(monkeypatch):
    cold = ColdStart()
    for _ in range(2 * cold_start.MIN_SAMPLES):
        run_cold(cold, 0.001, 0.010)  # one thread is the faster cold mode now
    assert run_cold(cold, 0.001, 0.010, tokens=cold_start.SMALL_TOKENS + 1) == 2  # a large batch spreads well
    assert run_cold(cold, 0.001, 0.010, threads=1) == 1
    # the second starts while the first runs: the machine is not idle, whichever model the first belongs to
    with cold.threads_for(2, 16) as outer, cold.threads_for(2, 16) as inner, ColdStart().threads_for(2, 16) as other:
        pass
    assert outer == 1 and inner == 2 and other == 2
    monkeypatch.setattr(cold_start, "IDLE_AFTER_S", 60.0)
    assert run_cold(cold, 0.001, 0.010) == 2  # a forward ended moments ago: the helpers are still spinning


def test_a_cold_forward_on_the_real_encoder_gives_the_same_vectors(minilm, monkeypatch):
    if minilm.threads < 2:
        pytest.skip("one core: every forward runs on one thread")
    monkeypatch.setattr(minilm, "_cold_start", ColdStart())
    batch = [minilm.tokenize(["a short sentence to embed"])[0]]
    vectors = [minilm.pooled(batch) for _ in range(2 * cold_start.MIN_SAMPLES)]
    assert None not in minilm._cold_start.summary().values()  # both the 1-thread and the 2-thread forward ran
    for v in vectors[1:]:
        np.testing.assert_allclose(v, vectors[0], rtol=0, atol=1e-5)


def test_token_vectors_is_a_forward_too(minilm, monkeypatch):
    """TEI's /embed_all forward (token_vectors) counts like pooled's: a pooled forward that starts while it runs is
    not cold, and its own cold forwards are timed."""
    if minilm.threads < 2:
        pytest.skip("one core: every forward runs on one thread")
    cold = ColdStart()
    monkeypatch.setattr(minilm, "_cold_start", cold)
    seen = []
    inner = cold_start.ColdStart()
    real = minilm._forward

    def forward_and_look(packed):
        with inner.threads_for(2, 16) as n:  # another model's forward, started while this one runs
            seen.append(n)
        return real(packed)

    monkeypatch.setattr(minilm, "_forward", forward_and_look)
    ids = minilm.tokenize(["a short sentence to embed"])[0]
    vectors = minilm.token_vectors([ids])
    assert seen == [2] and vectors[0].shape == (len(ids), minilm.info.hidden_size)
    assert sum(v is not None for v in cold.summary().values()) == 1  # its own cold forward was timed
