"""The deployment files: Kustomize overlays render and pass the Kubernetes schemas, the
configuration they ship is accepted by Iatros's own start-up checks, and the Dockerfile
passes hadolint (no Docker daemon here to build it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from iatros.config import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
OVERLAYS = ["single-node", "ha"]


def _render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render deploy/k8s (kubectl kustomize)")
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _tool(name: str) -> str:
    path = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed (it is in the dev extra of pyproject.toml)")
    return path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_passes_the_kubernetes_schemas(overlay: str, tmp_path: Path) -> None:
    docs = _render(overlay)
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", "1.32.0", str(rendered)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_structure(overlay: str) -> None:
    docs = _render(overlay)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    gateway = next(d for d in by_kind["Deployment"] if d["metadata"]["name"] == "iatros-gateway")
    pod = gateway["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The grace period covers server.shutdown_timeout_s (streams get that long).
    config = yaml.safe_load(
        next(d for d in by_kind["ConfigMap"] if "iatros.yaml" in d["data"])["data"]["iatros.yaml"]
    )
    assert pod["terminationGracePeriodSeconds"] > config["server"]["shutdown_timeout_s"] + 5
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert "NetworkPolicy" in by_kind and "Secret" in by_kind
    if overlay == "ha":
        assert gateway["spec"]["replicas"] >= 3
        pdb = by_kind["PodDisruptionBudget"][0]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["minAvailable"] < gateway["spec"]["replicas"]
        hpa = by_kind["HorizontalPodAutoscaler"][0]
        assert hpa["spec"]["scaleTargetRef"]["name"] == "iatros-gateway"
        metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
        assert metrics["Resource"]["resource"]["name"] == "cpu"
        assert metrics["Pods"]["pods"]["metric"]["name"] == "iatros_requests_in_flight"
        assert any(d["metadata"]["name"] == "iatros-worker" for d in by_kind["Deployment"])
        assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    else:
        assert gateway["spec"]["replicas"] == 1
        assert "HorizontalPodAutoscaler" not in by_kind and "PodDisruptionBudget" not in by_kind
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "persistentVolumeClaim" in volumes["data"] and "emptyDir" not in volumes["data"]


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.startswith("#")}


@pytest.mark.parametrize(
    ("config", "secrets"),
    [
        ("k8s/overlays/ha/iatros.yaml", "k8s/base/secrets.env"),
        ("k8s/overlays/single-node/iatros.yaml", "k8s/overlays/single-node/secrets.env"),
        ("k8s/base/iatros.yaml", "k8s/base/secrets.env"),
        ("compose/iatros.yaml", None),
    ],
)
def test_shipped_configuration_passes_the_start_up_checks(
    config: str, secrets: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several instances: the shipped settings must be the shared ones (or Iatros refuses)."""
    env = _env_file(DEPLOY / (secrets or "compose/example.env"))
    if secrets is None:  # compose.yaml builds these two from .env
        env["IATROS_DATABASE_URL"] = "postgresql://iatros:x@postgres:5432/iatros"
        env["IATROS_REDIS_URL"] = "redis://redis:6379/0"
    for name, value in {**env, "IATROS_DATA_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(DEPLOY / config)
    assert settings.server.host == "0.0.0.0"
    if settings.server.instances > 1:
        assert settings.cache.backend == "redis" and settings.instance_warnings() == []


def test_compose_file_has_the_shared_services() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway", "worker", "redis", "postgres", "qdrant", "prometheus"} <= set(services)
    assert services["worker"]["command"][0] == "worker"
    assert "/readyz" in " ".join(services["gateway"]["healthcheck"]["test"])
    prometheus = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("FROM ") >= 2 and "USER 10001" in text  # multi-stage, non-root


def test_haproxy_example_is_valid_and_matches_the_tested_configuration() -> None:
    from iatros.testing.cluster import haproxy_config

    path = DEPLOY / "haproxy" / "haproxy.cfg"
    result = subprocess.run(
        [_tool("haproxy"), "-c", "-f", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = haproxy_config(8080, 8404, [("iatros1", 8081)])
    shipped = path.read_text()
    for line in tested.splitlines():  # every directive the cluster tests ran with
        if line.strip().startswith(
            ("retry-on", "option", "http-check", "default-server", "retries", "timeout")
        ):
            assert line in shipped, line
