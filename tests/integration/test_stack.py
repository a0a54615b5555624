"""The local stack against real processes: started, reported, and left alone when up."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.settings import Settings
from consumers.stack import LocalStack, ServiceStatus, StackError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="module")
def stack(settings: Settings) -> LocalStack:
    return LocalStack(settings)


def _by_name(statuses: list[ServiceStatus]) -> dict[str, ServiceStatus]:
    return {status.name: status for status in statuses}


async def test_up_leaves_every_service_answering_where_settings_point(
    stack: LocalStack, settings: Settings
) -> None:
    await stack.up_async()

    statuses = _by_name(await stack.status_async())

    cluster = {f"redis-cluster-{i}" for i in range(6)}
    services = {"kafka", "redis", "redis-tls", "temporal", "schema-registry", "prometheus"}
    assert set(statuses) == services | {"jaeger"} | cluster
    assert all(status.up for status in statuses.values()), statuses
    assert statuses["kafka"].endpoint.endswith(f":{settings.kafka_port}")
    assert statuses["redis"].endpoint.endswith(f":{settings.redis_port}")
    assert statuses["temporal"].endpoint.endswith(f":{settings.temporal_port}")
    assert statuses["redis-tls"].endpoint.startswith("rediss://")
    assert f":{settings.stack_redis_tls_port}/" in statuses["redis-tls"].endpoint


async def test_up_again_keeps_the_running_processes(stack: LocalStack) -> None:
    before = _by_name(await stack.up_async())

    after = _by_name(await stack.up_async())

    assert {name: s.pid for name, s in after.items()} == {name: s.pid for name, s in before.items()}
    assert all(status.up for status in after.values())


async def test_status_reports_down_where_nothing_listens(tmp_path: Path) -> None:
    unused = Settings(
        stack_dir=tmp_path,
        kafka_bootstrap="127.0.0.1:1",
        redis_url="redis://127.0.0.1:2/0",
        temporal_address="127.0.0.1:3",
        stack_redis_tls_port=4,
        stack_schema_registry_port=5,
        stack_redis_cluster_port=6,
        stack_prometheus_port=12,
        stack_jaeger_query_port=13,
    )

    statuses = await LocalStack(unused).status_async()

    assert [(s.name, s.up, s.pid) for s in statuses] == [
        ("kafka", False, None),
        ("redis", False, None),
        ("redis-tls", False, None),
        ("temporal", False, None),
        ("schema-registry", False, None),
        ("prometheus", False, None),
        ("jaeger", False, None),
        *((f"redis-cluster-{i}", False, None) for i in range(6)),
    ]


async def test_only_chooses_services_by_name_and_refuses_unknown_ones(tmp_path: Path) -> None:
    settings = Settings(stack_dir=tmp_path)
    statuses = await LocalStack(settings, only={"kafka", "redis-cluster"}).status_async()
    assert [s.name for s in statuses] == ["kafka", *(f"redis-cluster-{i}" for i in range(6))]
    with pytest.raises(StackError, match="unknown services nope; choose from jaeger, kafka"):
        LocalStack(settings, only={"kafka", "nope"})
