#!/usr/bin/env bash
# Set up .venv and start the server (default: the packaged all-MiniLM-L6-v2, offline, on 127.0.0.1:8000).
# Flags pass through: bash scripts/serve.sh --model nomic-ai/nomic-embed-text-v1.5 --port 8080
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m app "$@"
