"""/docs (Swagger UI) renders the API in a real headless browser with no network beyond loopback: its scripts come
from the installed package (fastapi-offline), not a CDN, so it works on air-gapped hosts. ReDoc is not served (its
logo always comes from a CDN).

The browser is Debian's `chromium` (scripts/test.sh installs it). It resolves only 127.0.0.1 (every other host is
NOTFOUND), so a page that needed a CDN would stay blank; its net log shows what the page itself requested.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

INSTALL = "apt-get install -y chromium"
OPERATIONS = ["/v1/embeddings", "/v1/models", "/tokenize", "/health", "/ready"]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = f"chromium not found: install it with `{INSTALL}` (scripts/test.sh does)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)  # CI runs scripts/test.sh: a missing browser is a broken setup
        pytest.skip(message)
    return path


def render(chromium: str, url: str, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran (10 s of virtual time), and the URLs the page requested."""
    net_log = tmp_path / "net.json"
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--disable-features=AutofillServerCommunication",  # the browser's own form-autofill lookups, not the page's
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--log-net-log={net_log}",
        "--virtual-time-budget=10000", "--dump-dom", url,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    site = f"http://{urlsplit(url).hostname}"
    requested = []
    for event in log["events"]:
        params = event.get("params") or {}
        # the page's requests carry its site as their network isolation key; the browser's own (update checks,
        # network time) carry none and are no part of the page
        if event["type"] == start and "url" in params and params.get("network_isolation_key", "").startswith(site):
            requested.append(params["url"])
    return result.stdout, requested


def test_docs_render_the_operations_offline(chromium, nomic_server, tmp_path):
    dom, requested = render(chromium, nomic_server.base + "/docs", tmp_path)
    missing = [op for op in OPERATIONS if f'data-path="{op}"' not in dom]  # one rendered block per operation
    assert not missing, f"/docs did not render {missing}:\n{dom[:2000]}"
    assert f"{nomic_server.base}/openapi.json" in requested
    assert f"{nomic_server.base}/static-offline-docs/swagger-ui-bundle.js" in requested  # from the server itself
    outside = [url for url in requested if urlsplit(url).hostname != "127.0.0.1"]
    assert not outside, f"/docs asked for more than loopback: {outside}"


def test_redoc_is_not_served(nomic_server):
    response = httpx.get(nomic_server.base + "/redoc")
    assert response.status_code == 404 and response.json()["error"]["code"] is not None
