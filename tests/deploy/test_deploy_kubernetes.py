"""deploy/kubernetes: every resource of the kustomization validates (strict) against a pinned Kubernetes version's
schema, offline (PyPI kubernetes-validate), and the Deployment matches the drain, the ops port and the bench."""

from __future__ import annotations

import tomllib
from typing import Any

import kubernetes_validate
import pytest
from deploy_support import BUDGETS, DEPLOY, yaml_docs

KUBERNETES_VERSION = "1.33.0"  # the oldest minor the manifests target is 1.30 (preStop `sleep`); validated here
K8S = DEPLOY / "kubernetes"


def _resources() -> list[dict[str, Any]]:
    kustomization = yaml_docs(K8S / "kustomization.yaml")[0]
    return [doc for name in kustomization["resources"] for doc in yaml_docs(K8S / name)]


def _one(kind: str) -> dict[str, Any]:
    (found,) = [r for r in _resources() if r["kind"] == kind]
    return found


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(yaml_docs(K8S / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("resource", _resources(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}")
def test_each_resource_validates_against_the_pinned_kubernetes_schema(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)  # raises with the failing field


def test_a_broken_resource_is_rejected() -> None:
    deployment = _one("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_deployment_matches_the_drain_the_ops_port_and_the_bench() -> None:
    config = _one("ConfigMap")["data"]
    pod = _one("Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # Kubernetes kills the pod terminationGracePeriodSeconds after it starts deleting it, preStop included; the
    # gateway needs grace + timeout, and its supervisor kills a worker 5 s after that.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_s = (int(config["LAYER_DRAIN_GRACE_MS"]) + int(config["LAYER_DRAIN_TIMEOUT_MS"])) / 1000
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop + drain_s + 5
    # Scraped on the ops port, which the client Service does not expose; the NetworkPolicy opens it to Prometheus.
    assert ports["ops"] == int(config["LAYER_OPS_PORT"]) == int(pod["metadata"]["annotations"]["prometheus.io/port"])
    assert config["LAYER_OPS_HOST"] == "0.0.0.0"
    service_ports = _one("Service")["spec"]["ports"]
    assert [p["targetPort"] for p in service_ports] == ["http"]
    assert "ops" in {p["port"] for rule in _one("NetworkPolicy")["spec"]["ingress"] for p in rule["ports"]}
    # Memory from the bench: every worker at its measured peak with bodies at the ConfigMap's limits (the [bodies]
    # budget was measured with exactly those), plus the serve process; the request covers the steady budget.
    budgets = tomllib.loads(BUDGETS.read_text())
    workers = int(config["LAYER_WORKERS"])
    assert (config["LAYER_MAX_BODY_BYTES"], config["LAYER_MAX_BUFFERED_BODY_BYTES"]) == (str(16 << 20), str(32 << 20))
    limit_mb = _mebibytes(container["resources"]["limits"]["memory"])
    request_mb = _mebibytes(container["resources"]["requests"]["memory"])
    assert limit_mb >= workers * budgets["bodies"]["worker_peak_rss_mb_max"] + 100
    assert request_mb >= workers * budgets["soak"]["rss_mb_max"]
    assert float(container["resources"]["requests"]["cpu"]) == workers  # one core per worker
    assert _one("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    assert _one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def _mebibytes(quantity: str) -> float:
    assert quantity.endswith("Mi"), quantity
    return float(quantity.removesuffix("Mi"))
