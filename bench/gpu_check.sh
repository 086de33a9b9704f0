#!/usr/bin/env bash
# Everything the GPU needs, in ONE device call (issue 23): install the carried wheels, run tests/gpu, run
# `python -m bench --device cuda`, and leave the results in $OUT (flat, at most 8 files: the device tool's limit):
#   gpu-check.log               this script's whole output (machine, tests, bench)
#   tests-gpu.xml               pytest's JUnit report of tests/gpu
#   <date>-<gpu>.json / .md     the bench rows, targets, checks and machine (bench/README.md)
#   <date>-<gpu>-*.png          the bench's plots
#   bench-logs.txt              the tail of every bench runner's and server's log
# Before the call, here: bash bench/gpu_prepare.sh (wheels into .whl/, the bf16 MiniLM into .carry/). The call:
#   run(command="bash bench/gpu_check.sh", carry=[".whl", ".carry"], timeout_s=540)
# Options: --dry-run (the same steps on this CPU with tiny sizes, the project venv, peers from bench/.venvs/st),
#          --quick (the bench's quick profile), --tests-only, --bench-only.
# GPU_CHECK_BUDGET_S (default 450 s, 900 for the dry run) bounds the whole script; tests/gpu get at most 240 s of it,
# and the bench starts no scenario in its last 100 s (the rows of those that ran are written as each ends).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dry=0 quick=0 tests=1 bench=1
for arg in "$@"; do
  case $arg in
    --dry-run) dry=1 ;;
    --quick) quick=1 ;;
    --tests-only) bench=0 ;;
    --bench-only) tests=0 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
start=$(date +%s)
budget=${GPU_CHECK_BUDGET_S:-$([ "$dry" = 1 ] && echo 900 || echo 450)}  # the dry run: 2 busy cores, not a GPU
left() { echo $(( budget - ($(date +%s) - start) )); }
if [ "$dry" = 1 ]; then
  OUT=${OUT:-/tmp/gpu-check-dry}
  py=${PYTHON:-.venv/bin/python} device=cpu profile=smoke
  peers=(--peer-python "${PEER_PYTHON:-bench/.venvs/st/bin/python}")
  [ -x "${peers[1]}" ] || peers=(--no-peers)  # no peer venv here: our side only
  model=(--nomic tests/data/golden/nomic/nomic-text-tiny)
else
  py=python3 device=cuda profile=full peers=(--peer-python python3) model=()
fi
[ "$quick" = 1 ] && [ "$dry" = 0 ] && profile=quick
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
echo "== gpu_check $(date -u +%FT%TZ): device=$device profile=$profile budget=${budget}s commit=$(git rev-parse --short HEAD 2>/dev/null)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true

if [ "$dry" = 0 ]; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "error: no .whl/ (run bench/gpu_prepare.sh here, carry .whl)"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: installing the carried wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
fi
"$py" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"capability {p.major}.{p.minor}", f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
EOF

status=0
if [ "$tests" = 1 ]; then
  echo "== tests/gpu ($(left)s left)"
  GPU_TESTS_DEVICE=$device timeout $(( $(left) < 240 ? $(left) : 240 )) "$py" -m pytest tests/gpu -q -p no:cacheprovider \
    -rA --durations=15 --junitxml="$OUT/tests-gpu.xml" || status=1
fi
if [ "$bench" = 1 ]; then
  room=$(( $(left) - 15 ))
  echo "== bench --device $device --profile $profile (${room}s left)"
  if [ "$room" -gt 60 ]; then
    timeout "$room" "$py" -m bench --device "$device" --profile "$profile" --only gpu_inprocess gpu_forward gpu_server \
      "${peers[@]}" "${model[@]}" --out "$OUT" --deadline-s $(( room - 100 > 0 ? room - 100 : 0 )) || status=1
  else
    echo "error: no time left for the bench"; status=1
  fi
  logs=$(ls -td "${TMPDIR:-/tmp}"/bench-*/ 2>/dev/null | head -n 1)  # this run's runner and server logs
  for f in "${logs:-/nonexistent}"*.log; do
    [ -f "$f" ] && { echo "==> $f"; tail -n 60 "$f"; }
  done > "$OUT/bench-logs.txt" 2>/dev/null
fi
echo "== done in $(( $(date +%s) - start ))s, status $status; in $OUT:"
ls -la "$OUT"
exit $status
