#!/usr/bin/env bash
# Set up .venv with the test extras, install the test suite's system tools, run the whole suite.
# Extra arguments go to pytest: bash scripts/test.sh tests/model -x
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test,ray bash scripts/setup.sh
# System tools the suite uses, from Debian: promtool and a real Prometheus for the metrics and deployment checks
# (`prometheus`), a headless browser for the offline /docs check (`chromium`)
missing=()
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >/dev/null 2>&1 \
      || echo "warning: could not install ${missing[*]}; tests that need them will fail" >&2
  fi
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
