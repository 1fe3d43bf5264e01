"""deploy/compose.yaml is a valid Compose file (the specification's JSON schema, vendored) and its pieces agree."""

from __future__ import annotations

import json
import re

import jsonschema
import yaml
from deploy_support import DEPLOY, dockerfile_final_stage, yaml_docs


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(_compose())]
    assert not errors, errors


def test_compose_wires_the_gateway_to_aerospike_prometheus_and_grafana() -> None:
    services = _compose()["services"]
    assert set(services) == {"gateway", "aerospike", "postgres", "prometheus", "grafana"}
    env = services["gateway"]["environment"]
    assert env["LAYER_WORKERS"] == "2"
    # Compose waits stop_grace_period after SIGTERM before SIGKILL: the image's drain grace + timeout + 5 s.
    _, image_env = dockerfile_final_stage()
    drain_s = (int(image_env["LAYER_DRAIN_GRACE_MS"]) + int(image_env["LAYER_DRAIN_TIMEOUT_MS"])) / 1000 + 5
    assert int(services["gateway"]["stop_grace_period"].removesuffix("s")) >= drain_s
    # Every file a service mounts from deploy/ exists.
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    # The Aerospike namespaces the gateway uses are the ones aerospike.conf defines, never expiring (docs/deploy.md).
    conf = (DEPLOY / "aerospike" / "aerospike.conf").read_text()
    namespaces = dict(re.findall(r"^namespace (\S+) \{(.*?)^\}", conf, re.MULTILINE | re.DOTALL))
    assert set(namespaces) == {env["AEROSPIKE_NAMESPACE"], env["AEROSPIKE_KEYS_NAMESPACE"]}
    assert all(re.search(r"^\s*default-ttl 0\b", body, re.MULTILINE) for body in namespaces.values())
    assert f"cluster-name {env['AEROSPIKE_CLUSTER_NAME']}" in conf
    # Prometheus scrapes the gateway's ops port on the compose network; Grafana gets the dashboard provisioned.
    (job,) = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["gateway:9464"]
    provider = yaml_docs(DEPLOY / "grafana" / "provisioning" / "dashboards" / "layer.yml")[0]["providers"][0]
    assert any(v.endswith(f":{provider['options']['path']}/layer.json:ro") for v in services["grafana"]["volumes"])
