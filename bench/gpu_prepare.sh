#!/usr/bin/env bash
# Here, before a device call (needs PyPI; run it in the checkout the session was started in, which is what the device
# tool sends): fetch the wheels the GPU machine lacks into .whl/ and write the bf16 MiniLM the GPU tests use into
# .carry/ (both git-ignored), then print what will travel (the limit is 64 MiB). bench/README.md, "On a GPU".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
# The machine's python3 (3.12) has torch, transformers, sentence-transformers, tokenizers, safetensors, numpy, httpx,
# prometheus-client, tqdm, matplotlib and pytest; the server also needs these (openai is not used by tests/gpu).
# the versions this checkout's venv runs (and its tests passed with)
pins=$("$PY" -c "from importlib.metadata import version as v; print(*(f'{n}=={v(n)}' for n in ('fastapi', 'uvicorn', 'pydantic-settings', 'orjson')))")
rm -rf .whl && mkdir .whl
"$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl $pins 2>&1 | grep -v '^WARNING' || true
# what the machine has at the versions its torch was built with stays theirs
rm -f .whl/numpy-* .whl/typing_extensions-* .whl/torch-* .whl/nvidia_* .whl/triton-*
"$PY" -m tests.gpu.minilm_bf16 .carry/minilm-bf16
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -cb .whl .carry | tail -1 | cut -f1)
total=$(( tracked + ${untracked:-0} + carried ))
echo "travels: $(( total / 1048576 )) MiB (tree $(( tracked / 1048576 )), untracked $(( ${untracked:-0} / 1048576 )), .whl + .carry $(( carried / 1048576 ))) of 64 MiB"
[ "$total" -lt $(( 64 * 1048576 )) ] || { echo "error: over the device tool's 64 MiB" >&2; exit 1; }
