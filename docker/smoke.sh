#!/usr/bin/env bash
# Smoke test of the CPU deployment, end to end with a real Docker engine:
#   build the CPU image -> `docker compose up --wait` (embeddings, prometheus, grafana, all healthy)
#   -> a real embeddings request -> Prometheus scrapes the server, Grafana has the dashboard -> down.
#
#   bash docker/smoke.sh
#
# Exits 0 after printing "SKIP: <why>" where it cannot run: no Docker engine, or an image that is
# neither local nor pullable (no registry reachable). Any other failure exits non-zero with logs.
# It runs as its own compose project on other host ports, so a running stack is left alone.
#
# Settings (environment):
#   SMOKE_MODEL         model to serve; default the packaged all-MiniLM-L6-v2 (no model download)
#   SMOKE_PROJECT       compose project name (default nomic-embed-smoke)
#   SMOKE_EMBED_PORT, SMOKE_PROMETHEUS_PORT, SMOKE_GRAFANA_PORT   host ports (18000, 19090, 13000)
#   SMOKE_KEEP=1        leave the stack running afterwards
#   COMPOSE             the compose command (default `docker compose`, else a `docker-compose` v2)
set -euo pipefail
cd "$(dirname "$0")/.."

project=${SMOKE_PROJECT:-nomic-embed-smoke}
export EMBED_MODEL=${SMOKE_MODEL:-packaged:all-MiniLM-L6-v2}
export EMBED_PUBLISH_PORT=${SMOKE_EMBED_PORT:-18000}
export PROMETHEUS_PUBLISH_PORT=${SMOKE_PROMETHEUS_PORT:-19090}
export GRAFANA_PUBLISH_PORT=${SMOKE_GRAFANA_PORT:-13000}
api=http://127.0.0.1:$EMBED_PUBLISH_PORT

skip() { echo "SKIP: $*"; exit 0; }
fail() { echo "FAIL: $*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || skip "no docker CLI on PATH"
docker info >/dev/null 2>&1 || skip "no Docker engine is running (docker info failed)"
command -v curl >/dev/null 2>&1 || fail "curl is needed"

if [ -n "${COMPOSE:-}" ]; then
    read -r -a compose_cmd <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version 2>/dev/null | grep -q 'v2\.'; then
    compose_cmd=(docker-compose)
else
    fail "Docker Compose v2 not found (install the compose plugin, or set COMPOSE=/path/to/docker-compose)"
fi
compose() { "${compose_cmd[@]}" -p "$project" -f compose.yaml -f docker/compose.cpu.yaml "$@"; }

# Base images: local, or pulled now; neither means no registry here.
cpu_base=$(sed -n 's/^ARG CPU_BASE_IMAGE=//p' Dockerfile)
mapfile -t images < <(compose config --images | grep -v '^nomic-embed-server')
for image in "$cpu_base" "${images[@]}"; do
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        echo "pulling $image"
        docker pull -q "$image" >/dev/null 2>&1 || skip "image $image is not local and cannot be pulled (no registry reachable)"
    fi
done

status=1
cleanup() {
    if [ "$status" -ne 0 ]; then
        compose ps -a || true
        compose logs --no-color --tail 80 || true
    fi
    if [ "${SMOKE_KEEP:-0}" != 1 ]; then
        compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

echo "== build the CPU image"
compose build embeddings

echo "== docker compose up --wait (model: $EMBED_MODEL)"
compose up --detach --wait --wait-timeout 900

echo "== embeddings request"
model=$(curl -fsS "$api/v1/models" | grep -o '"id" *: *"[^"]*"' | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/')
[ -n "$model" ] || fail "no model in GET /v1/models"
response=$(curl -fsS "$api/v1/embeddings" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$model\", \"input\": [\"hello world\", \"smoke test\"]}")
count=$(grep -o '"embedding" *: *\[' <<<"$response" | wc -l)
[ "$count" -eq 2 ] || fail "expected 2 embeddings, got: ${response:0:300}"
echo "2 embeddings from $model"

echo "== Prometheus scrapes the server"
prometheus=http://127.0.0.1:$PROMETHEUS_PUBLISH_PORT
for _ in $(seq 30); do
    if curl -fsS "$prometheus/api/v1/query" --data-urlencode 'query=sum(embed_embeddings_total)' | grep -q '"value":\[[^]]*,"[1-9]'; then
        scraped=1
        break
    fi
    sleep 2
done
[ "${scraped:-0}" = 1 ] || fail "Prometheus has no embed_embeddings_total > 0 after 60 s"
curl -fsS "$prometheus/api/v1/rules" | grep -q EmbeddingsTargetDown || fail "alert rules not loaded"

echo "== Grafana serves the dashboard to anonymous viewers"
grafana=http://127.0.0.1:$GRAFANA_PUBLISH_PORT
curl -fsS "$grafana/api/health" | grep -q '"database": *"ok"' || fail "Grafana unhealthy"
curl -fsS "$grafana/api/dashboards/uid/nomic-embed-server" | grep -q '"title": *"Embedding server"' \
    || fail "dashboard nomic-embed-server not provisioned"

status=0
echo "PASS: docker/smoke.sh"
