"""Prometheus for the local stack (Debian's package), scraping what tests and the demo
register: a target is a JSON file in ``stack_dir/prometheus/targets`` (file service
discovery), rule files go in ``stack_dir/prometheus/rules`` (loaded on ``reload``)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from consumers.stack.packages import find_or_install
from consumers.stack.service import HOST, Service

_HINT = "install prometheus (Debian/Ubuntu: apt-get install prometheus)"


class PrometheusService(Service):
    """``prometheus`` on ``stack_prometheus_port``, scraping every second."""

    name = "prometheus"
    ready_timeout_s = 60.0
    stop_grace_s = 10.0

    @property
    def port(self) -> int:
        """The HTTP API's port."""
        return self.settings.stack_prometheus_port

    @property
    def endpoint(self) -> str:
        """The HTTP API (``/api/v1/query``)."""
        return f"http://{HOST}:{self.port}"

    @property
    def targets_dir(self) -> Path:
        """Where a scrape target is registered (one JSON file each)."""
        return self.dir / "targets"

    @property
    def rules_dir(self) -> Path:
        """Where rule files are loaded from (on start and on ``reload``)."""
        return self.dir / "rules"

    def prepare(self) -> list[str]:
        """Find (or install) Prometheus, write its configuration, return its command line."""
        binary = find_or_install("prometheus", "prometheus", _HINT)
        for folder in (self.targets_dir, self.rules_dir, self.dir / "data"):
            folder.mkdir(parents=True, exist_ok=True)
        config = self.dir / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(self.rules_dir / "*.yml")],
                    "scrape_configs": [
                        {
                            "job_name": "memstream",
                            "file_sd_configs": [
                                {
                                    "files": [str(self.targets_dir / "*.json")],
                                    "refresh_interval": "1s",
                                }
                            ],
                        }
                    ],
                },
                indent=2,
            )
        )
        return [
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]

    def register(self, name: str, address: str, labels: dict[str, str] | None = None) -> Path:
        """Scrape ``address`` (host:port serving ``/metrics``) as ``name``; returns its file."""
        path = self.targets_dir / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [address], "labels": labels or {}}]))
        tmp.replace(path)
        return path

    def reload(self) -> None:
        """Load the rule files (and configuration) again."""
        request = urllib.request.Request(f"{self.endpoint}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    async def _answers(self) -> bool:
        def ready() -> bool:
            with urllib.request.urlopen(f"{self.endpoint}/-/ready", timeout=2) as reply:
                return bool(reply.status == 200)

        return await asyncio.to_thread(ready)
