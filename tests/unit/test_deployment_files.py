"""The deployment files (Dockerfile, compose file, Kubernetes manifests) as far as this
machine can check them without Docker or Kubernetes: every workload runs one role of the
one image, probes the health port it enables, and names only real settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from consumers.runner import ROLES
from consumers.settings import unknown_variables
from memory_core import load_configs

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _documents() if d["kind"] == kind]


def _config_map(name: str) -> dict[str, Any]:
    (found,) = [c for c in _by_kind("ConfigMap") if c["metadata"]["name"] == name]
    return found


def _assert_settings(names: list[str]) -> None:
    assert unknown_variables(dict.fromkeys(names, "x")) == []


def test_every_workload_runs_one_role_and_probes_its_health_port() -> None:
    workloads = _by_kind("Deployment") + _by_kind("StatefulSet")
    roles = []
    for w in workloads:
        (container,) = w["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert args[:2] == ["run", "--roles"] and args[2] in ROLES
        roles.append(args[2])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"health": 8080}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
        assert refs == {"memstream-settings", "memstream-secrets"}
        _assert_settings([e["name"] for e in container.get("env", [])])
        assert w["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert sorted(roles) == sorted(ROLES)


def test_the_settings_enable_the_probed_port_and_name_only_real_settings() -> None:
    (settings,) = [
        c for c in _by_kind("ConfigMap") if c["metadata"]["name"] == "memstream-settings"
    ]
    (secret,) = _by_kind("Secret")
    assert settings["data"]["MEMSTREAM_HEALTH_PORT"] == "8080"
    assert settings["data"]["MEMSTREAM_HEALTH_HOST"] == "0.0.0.0"
    _assert_settings([*settings["data"], *secret["stringData"]])


def test_apply_consumers_are_stable_members_within_the_partition_count() -> None:
    (apply,) = _by_kind("StatefulSet")
    (settings,) = [
        c for c in _by_kind("ConfigMap") if c["metadata"]["name"] == "memstream-settings"
    ]
    assert apply["spec"]["replicas"] <= int(settings["data"]["MEMSTREAM_TOPIC_PARTITIONS"])
    (container,) = apply["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MEMSTREAM_CONSUMER_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }


def test_the_memories_config_map_is_a_valid_memories_file() -> None:
    (memories,) = [
        c for c in _by_kind("ConfigMap") if c["metadata"]["name"] == "memstream-memories"
    ]
    assert [c.id for c in load_configs(memories["data"]["memories.yaml"])] == ["support-agent"]


def test_the_compose_file_runs_each_role_against_the_internal_listener() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
    services = compose["services"]
    kafka_env = services["kafka"]["environment"]
    assert "INTERNAL://kafka:29092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]
    assert kafka_env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    roles = []
    for name in ("memstream-apply", "memstream-dispatch", "memstream-worker", "memstream-http"):
        service = services[name]
        assert service["profiles"] == ["app"] and service["build"] == "."
        command = service["command"]
        roles.append(command[2])
        env = service["environment"]
        _assert_settings(list(env))
        assert env["MEMSTREAM_KAFKA_BOOTSTRAP"] == "kafka:29092"
        port = env["MEMSTREAM_HEALTH_PORT"]
        assert service["ports"][0].endswith(f":{port}")
    assert sorted(roles) == sorted(ROLES)


def test_the_image_runs_as_a_non_root_user_with_encodings_built_in() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001$", dockerfile, re.M)
    assert "memstream encodings install /opt/memstream/tiktoken" in dockerfile
    assert 'ENTRYPOINT ["memstream"]' in dockerfile
    _assert_settings(re.findall(r"\b(MEMSTREAM_[A-Z_]+)=", dockerfile))
