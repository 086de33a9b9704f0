"""Runner for sentence-transformers (its own venv under bench/.venvs/st). Speaks `common.serve`."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

state: dict = {}


def load(model: str, dtype: str = "float32", threads: int | None = None, device: str = "cpu",
         max_seq_length: int | None = None) -> dict:
    st = SentenceTransformer(model, device=device)
    st = st.to(getattr(torch, dtype))
    if max_seq_length:  # a folder without sentence-transformers metadata gets the config's positions (2048 for nomic)
        st.max_seq_length = max_seq_length
    if threads:
        torch.set_num_threads(threads)
    state["st"] = st
    return {
        "device": str(st.device),
        "max_seq_length": st.max_seq_length,
        "attn_implementation": getattr(getattr(getattr(st[0], "auto_model", None), "config", None),
                                       "_attn_implementation", None),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(),
                     **common.versions("torch", "transformers", "sentence-transformers", "tokenizers", "numpy")},
    }


def load_cross_encoder(model: str, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    state["ce"] = CrossEncoder(model, device="cpu")
    return {"dtype": "float32", "threads": torch.get_num_threads(), "activation": str(state["ce"].activation_fn)}


def score_pairs(query: str, documents: list[str]) -> dict:
    return {"scores": state["ce"].predict([(query, d) for d in documents], batch_size=32).tolist()}


def time_pairs(query: str, documents: list[str], batch_size: int, warmup: int, reps: int, max_s: float) -> dict:
    ce, pairs = state["ce"], [(query, d) for d in documents]
    times = common.timed(lambda: ce.predict(pairs, batch_size=batch_size), warmup, reps, max_s)
    return {"times": times, "n": len(documents)}


def embed_texts(texts: list[str]) -> dict:
    return {"vectors": state["st"].encode(texts, batch_size=len(texts), normalize_embeddings=True).tolist()}


def time_texts(texts: list[str], batch_size: int, warmup: int, reps: int, max_s: float) -> dict:
    st = state["st"]
    # The all-MiniLM pipeline ends in a Normalize module already; normalize_embeddings keeps it explicit for others.
    times = common.timed(lambda: st.encode(texts, batch_size=batch_size, normalize_embeddings=True), warmup, reps,
                         max_s)
    return {"times": times, "n": len(texts)}


if __name__ == "__main__":
    common.serve({"load": load, "embed_texts": embed_texts, "time_texts": time_texts,
                  "load_cross_encoder": load_cross_encoder, "score_pairs": score_pairs, "time_pairs": time_pairs})
