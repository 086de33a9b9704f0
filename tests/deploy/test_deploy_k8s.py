"""docker/k8s: the built-in kinds validate against the Kubernetes OpenAPI schemas shipped offline in PyPI
`kubernetes-validate` (strict: unknown fields fail); the ServiceMonitor (a CRD, which that package
does not know) against a JSON Schema written from the CRD's documented fields (schemas/); and the
manifests agree with each other (selectors, ports, probes, grace periods, autoscaling metrics)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from app.settings import Settings
from tests.deploy.conftest import setting_variables

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "docker" / "k8s"
# The oldest Kubernetes still in wide use and the newest the package knows.
OLDEST = "1.29.0"


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


DOCUMENTS = _documents()


def one(kind: str) -> dict:
    (doc,) = [doc for _, doc in DOCUMENTS if doc["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate not installed: `pip install kubernetes-validate` (test extras)", pytrace=False)
    return kubernetes_validate


def test_manifests_present():
    kinds = sorted(doc["kind"] for _, doc in DOCUMENTS)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "HorizontalPodAutoscaler", "ServiceMonitor"]
    )


@pytest.mark.parametrize(
    "name, doc",
    [d for d in DOCUMENTS if d[1]["kind"] != "ServiceMonitor"],
    ids=[f"{name}:{doc['kind']}" for name, doc in DOCUMENTS if doc["kind"] != "ServiceMonitor"],
)
def test_builtin_kinds_validate(kubernetes_validate, name, doc):
    from kubernetes_validate.utils import all_versions

    versions = all_versions()
    assert OLDEST in versions, versions
    for version in {OLDEST, versions[-1]}:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} {doc['kind']} against Kubernetes {version}: {error.message} at {list(error.path)}")


def test_servicemonitor_validates_against_crd_fields():
    import jsonschema

    schema = json.loads((Path(__file__).parent / "schemas" / "servicemonitor-v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(one("ServiceMonitor"))
    broken = json.loads(json.dumps(one("ServiceMonitor")))
    broken["spec"]["endpoints"][0]["interva"] = "5s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|h|m|s)", duration))


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_labels_and_ports_line_up():
    deployment, service, monitor = one("Deployment"), one("Service"), one("ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"], pod_labels)
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert _matches(one("PodDisruptionBudget")["spec"]["selector"], pod_labels)
    assert _matches(monitor["spec"]["selector"], service["metadata"]["labels"])

    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports == {"http": 8000}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service_ports["http"]["targetPort"] in container_ports
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
    assert _seconds(endpoint["scrapeTimeout"]) < _seconds(endpoint["interval"])


def test_probes_and_graceful_shutdown():
    pod = one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "slow model loads (first download)"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e["value"] for e in container["env"]}
    models = Settings(model=one("ConfigMap")["data"]["EMBED_MODEL"]).models  # an embedder and a reranker
    assert models == [("nomic-ai/nomic-embed-text-v1.5",) * 2, ("BAAI/bge-reranker-base",) * 2]
    assert env["HF_HOME"].startswith("/cache")
    (sleep,) = [int(arg) for arg in container["lifecycle"]["preStop"]["exec"]["command"][1:]]
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    drain = float(env["EMBED_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > sleep + drain, "SIGKILL must come after preStop + drain"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["cache"] == "/cache" and "cache" in {v["name"] for v in pod["volumes"]}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001


def commented_settings(path: Path) -> dict[str, str]:
    """`# EMBED_X: value` lines of a manifest: settings listed with their default, to uncomment."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"\s*#\s*(EMBED_[A-Z0-9_]+:.*)$", line)
        if match:
            found |= yaml.safe_load(match.group(1))
    return found


def test_every_setting_reaches_the_container(monkeypatch):
    """Every setting of app/settings.py is in the ConfigMap the pod reads (set, or commented out with a valid value),
    or in the Deployment's own env; nothing is in both, nothing is there that the server does not know."""
    configmap = one("ConfigMap")
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    sources = container["envFrom"]
    assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in sources, "the pod reads every ConfigMap key"
    assert {"secretRef": {"name": "nomic-embed-server-secrets", "optional": True}} in sources
    set_here = configmap["data"]
    in_env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("EMBED_")}
    commented = commented_settings(K8S / "configmap.yaml")
    assert not set(set_here) & set(in_env) and not set(set_here) & set(commented)
    listed = set(set_here) | set(in_env) | set(commented)
    names = setting_variables()
    assert not [n for n in names if n not in listed], "settings the manifests do not list"
    assert not listed - set(names), "settings the server does not have"
    # the values parse as the server reads them in the pod, set ones and each commented one uncommented
    from app.settings import Settings

    for name, value in {**set_here, **in_env, **commented}.items():
        assert isinstance(value, str), f"{name}: quote it (environment values are strings)"
        monkeypatch.setenv(name, value)
    Settings()


def test_hpa_reads_metrics_the_adapter_serves():
    hpa, deployment = one("HorizontalPodAutoscaler"), one("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "two replicas keep serving through a pod restart"
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted, "the HPA scales on a Pods metric (queue or latency)"

    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {}
    for rule in values["rules"]["custom"]:
        assert {"seriesQuery", "resources", "name", "metricsQuery"} <= set(rule)
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
        assert re.search(rule["name"]["matches"], series), rule["name"]
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"], (rule["name"]["as"], placeholder)
        served[rule["name"]["as"]] = rule
    assert wanted <= set(served), f"HPA metrics with no adapter rule: {wanted - set(served)}"


def adapter_query(rule: dict, pods: list[str]) -> str:
    """A rule's metricsQuery as prometheus-adapter sends it for the pods of one namespace."""
    series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
    matchers = f'namespace="default",pod=~"{"|".join(pods)}"'
    query = rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)
    return query.replace("<<.GroupBy>>", "pod")


def test_hpa_metrics_are_defined_when_idle(promtool_bin, run_tool, tmp_path):
    """Every metric the HPA scales on has a number for an idle pod (the HPA skips scale-down while any metric is
    invalid, so a NaN at idle would keep the peak's replicas forever), and the queue-wait p95 of a busy pod is its
    real p95. Evaluated by promtool on series shaped as the server exports them."""
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    rules = {rule["name"]["as"]: rule for rule in values["rules"]["custom"]}
    wanted = {m["pods"]["metric"]["name"] for m in one("HorizontalPodAutoscaler")["spec"]["metrics"]}
    assert wanted == {"embed_queue_tokens", "embed_queue_wait_seconds_p95"}
    pods = ["idle", "busy"]

    def series(name: str, pod: str, values: str, **labels: str) -> dict:
        text = ",".join(f'{k}="{v}"' for k, v in {"namespace": "default", "pod": pod, **labels}.items())
        return {"series": f"{name}{{{text}}}", "values": values}

    bucket = "embed_queue_wait_seconds_bucket"
    inputs = [
        # idle: 40 inputs were embedded before the test window, none since (counters flat)
        series(bucket, "idle", "40x15", le="0.05"), series(bucket, "idle", "40x15", le="0.25"),
        series(bucket, "idle", "40x15", le="+Inf"), series("embed_queue_tokens", "idle", "0x15"),
        # busy: 10 inputs a minute, 5 waited <= 50 ms, all <= 250 ms -> p95 = 0.05 + 0.2 * (9.5 - 5) / 5 = 0.23 s
        series(bucket, "busy", "0+5x15", le="0.05"), series(bucket, "busy", "0+10x15", le="0.25"),
        series(bucket, "busy", "0+10x15", le="+Inf"), series("embed_queue_tokens", "busy", "48000x15"),
    ]
    # promtool (2.42) compares floats exactly: 0.23 as Prometheus computes it (bucketQuantile over per-second rates)
    rank, count = 0.95 * (10 / 60) - 5 / 60, 10 / 60 - 5 / 60
    p95 = 0.05 + (0.25 - 0.05) * (rank / count)
    assert abs(p95 - 0.23) < 1e-12
    expected = {"embed_queue_wait_seconds_p95": {"idle": 0.0, "busy": p95},
                "embed_queue_tokens": {"idle": 0.0, "busy": 48000.0}}
    tests = [
        {"expr": adapter_query(rules[name], pods), "eval_time": "10m",
         "exp_samples": [{"labels": f'{{pod="{pod}"}}', "value": value} for pod, value in expected[name].items()]}
        for name in sorted(wanted)
    ]
    spec = {"rule_files": [], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": inputs, "promql_expr_test": tests}]}
    (tmp_path / "adapter.test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run_tool([promtool_bin, "test", "rules", "adapter.test.yml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
