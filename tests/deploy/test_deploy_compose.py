"""compose.yaml (GPU, the default) and docker/compose.cpu.yaml (the CPU override): `docker compose config`
validates for every variant and profile, and the stack is wired as the docs say. No Docker engine needed."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from app.settings import Settings
from tests.deploy.conftest import setting_variables

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {
    "gpu": ["-f", "compose.yaml"],
    "cpu": ["-f", "compose.yaml", "-f", "docker/compose.cpu.yaml"],
}
SERVICES = {"embeddings", "prometheus", "grafana"}


def _compose_env() -> dict[str, str]:
    """The test's environment without variables the compose files interpolate, so defaults are checked."""
    interpolated = {"EMBED_", "HF_", "GRAFANA_", "PROMETHEUS_", "COMPOSE_", "DOCKER_"}
    return {k: v for k, v in os.environ.items() if not any(k.startswith(p) for p in interpolated)}


def compose(compose_bin, run_tool, variant: str, *args: str):
    result = run_tool([compose_bin, *VARIANTS[variant], *args], env=_compose_env())
    assert result.returncode == 0, f"docker compose {' '.join(args)} ({variant}):\n{result.stderr}{result.stdout}"
    return result.stdout


def profiles(compose_bin, run_tool, variant: str) -> list[str]:
    return compose(compose_bin, run_tool, variant, "config", "--profiles").split()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def config(request, compose_bin, run_tool) -> tuple[str, dict]:
    variant = request.param
    return variant, json.loads(compose(compose_bin, run_tool, variant, "config", "--format", "json"))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_compose_config_validates_for_every_profile(compose_bin, run_tool, variant):
    compose(compose_bin, run_tool, variant, "config", "--quiet")
    for profile in [*profiles(compose_bin, run_tool, variant), "*"]:
        compose(compose_bin, run_tool, variant, "--profile", profile, "config", "--quiet")


def test_default_path_starts_the_whole_stack(config):
    _, cfg = config
    assert set(cfg["services"]) == SERVICES, "the stack is the same three services on both paths"
    for name, service in cfg["services"].items():
        assert not service.get("profiles"), f"{name}: `docker compose up` must start it"


def test_every_service_is_healthchecked_and_restarts(config):
    _, cfg = config
    for name, service in cfg["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name}: healthcheck (docker compose up --wait needs it)"
        assert service.get("restart") == "unless-stopped", name
    probes = {name: " ".join(s["healthcheck"]["test"]) for name, s in cfg["services"].items()}
    assert "/ready" in probes["embeddings"]
    assert "/-/healthy" in probes["prometheus"]
    assert "/api/health" in probes["grafana"]
    compile(cfg["services"]["embeddings"]["healthcheck"]["test"][-1], "healthcheck", "exec")


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_embeddings_service(config):
    variant, cfg = config
    service = cfg["services"]["embeddings"]
    env = service["environment"]
    models = Settings(model=env["EMBED_MODEL"]).models  # an embedder and a reranker, the embedder the default
    assert models == [("nomic-ai/nomic-embed-text-v1.5",) * 2, ("BAAI/bge-reranker-base",) * 2]
    assert service["build"]["args"]["VARIANT"] == {"gpu": "cuda", "cpu": "cpu"}[variant]
    assert service["image"].startswith("nomic-embed-server:")
    assert [(p["target"], p["published"]) for p in service["ports"]] == [(8000, "8000")]
    assert [(v["type"], v["target"]) for v in service["volumes"]] == [("volume", "/cache")]
    assert _seconds(service["stop_grace_period"]) > float(env["EMBED_SHUTDOWN_GRACE_S"]), "SIGKILL only after the drain"
    # Unset settings are passed through from the shell, never as empty strings.
    assert all(
        value is None
        for key, value in env.items()
        if key not in {"EMBED_MODEL", "EMBED_DEVICE", "EMBED_SHUTDOWN_GRACE_S"}
    )

    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    if variant == "gpu":
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    else:
        assert not devices, "the CPU override drops the GPU reservation"
        assert env["EMBED_DEVICE"] == "cpu"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("source", ["shell", "env-file"])
def test_every_setting_reaches_the_container(compose_bin, run_tool, tmp_path, variant, source):
    names = setting_variables()
    assert len(names) >= 28 and "EMBED_KEEP_ALIVE_S" in names
    values = {name: str(10000 + i) for i, name in enumerate(names)}  # numbers: valid even where used as a port
    env, args = _compose_env(), []
    if source == "shell":
        env |= values
    else:  # what `.env` next to compose.yaml does, at a path of the test's own
        (tmp_path / "settings.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        args = ["--env-file", str(tmp_path / "settings.env")]
    result = run_tool([compose_bin, *VARIANTS[variant], *args, "config", "--format", "json"], env=env)
    assert result.returncode == 0, result.stderr
    service = json.loads(result.stdout)["services"]["embeddings"]
    received = service["environment"]
    dropped = [name for name in names if received.get(name) != values[name]]
    assert not dropped, f"settings compose.yaml does not pass to the server: {dropped}"
    port = values["EMBED_PORT"]
    assert [(p["target"], p["published"]) for p in service["ports"]] == [(int(port), "8000")]


def test_images_are_pinned(config):
    _, cfg = config
    for name in ("prometheus", "grafana"):
        image = cfg["services"][name]["image"]
        assert re.fullmatch(r"[a-z/]+:v?\d+\.\d+\.\d+", image), f"{name}: pin a version ({image})"


def test_bind_mounts_exist(config):
    _, cfg = config
    for name, service in cfg["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']} missing"
                assert volume.get("read_only"), f"{name}: config mounts are read-only"
    named = {v["source"] for s in cfg["services"].values() for v in s.get("volumes", []) if v["type"] == "volume"}
    assert named <= set(cfg["volumes"])


def test_prometheus_scrapes_the_service_and_grafana_reads_prometheus(config):
    _, cfg = config
    prom = yaml.safe_load((REPO / "docker/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "embeddings"]
    assert job["scrape_interval"] == "5s"
    assert job["static_configs"][0]["targets"] == ["embeddings:8000"]
    assert prom["rule_files"] == ["alerts.yml"]
    mounts = {v["target"] for v in cfg["services"]["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= mounts
    assert any(
        arg == "--config.file=/etc/prometheus/prometheus.yml" for arg in cfg["services"]["prometheus"]["command"]
    )

    datasources = yaml.safe_load((REPO / "docker/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((REPO / "docker/grafana/provisioning/dashboards/embeddings.yml").read_text())
    grafana_mounts = {v["target"]: v["source"] for v in cfg["services"]["grafana"]["volumes"] if v["type"] == "bind"}
    path = providers["providers"][0]["options"]["path"]
    assert Path(grafana_mounts[path], "embeddings.json").is_file()
    env = cfg["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
