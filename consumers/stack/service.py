"""What every local-stack service provides, and the status it reports."""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from consumers.settings import Settings
from consumers.stack.ready import tcp_open

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One service: whether it answers, where, its log, and its pid if this stack started it."""

    name: str
    up: bool
    endpoint: str
    log_path: Path
    pid: int | None

    def describe(self) -> str:
        """One human-readable line: state, endpoint, owning pid and log."""
        state = "up  " if self.up else "down"
        owner = f"pid {self.pid}" if self.pid is not None else "not started here"
        return f"{self.name:<16}{state} {self.endpoint:<25} {owner:<17} log {self.log_path}"


class Service(ABC):
    """A server process of the local stack, with its files under ``stack_dir/<name>``."""

    name: ClassVar[str]
    ready_timeout_s: ClassVar[float] = 60.0
    stop_grace_s: ClassVar[float] = 15.0
    probe_timeout_s: ClassVar[float] = 5.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def dir(self) -> Path:
        """The folder holding this service's data, logs and pid file."""
        return self.settings.stack_dir / self.name

    @property
    def pid_path(self) -> Path:
        """The pid file of the process this stack started."""
        return self.dir / f"{self.name}.pid"

    @property
    def console_path(self) -> Path:
        """Where the process's stdout and stderr go."""
        return self.dir / "console.log"

    @property
    def log_path(self) -> Path:
        """The service's main log."""
        return self.console_path

    @property
    @abstractmethod
    def port(self) -> int:
        """The loopback port clients use."""

    @property
    @abstractmethod
    def endpoint(self) -> str:
        """The address clients connect to."""

    @abstractmethod
    def prepare(self) -> list[str]:
        """Install and configure what the process needs (blocking); return its argv."""

    @abstractmethod
    async def _answers(self) -> bool:
        """Whether a real protocol request succeeds."""

    async def after_ready(self) -> None:
        """Set up what needs the running service (users, say); idempotent."""
        return None

    def env(self) -> dict[str, str]:
        """The environment the process starts with."""
        return dict(os.environ)

    async def probe(self) -> bool:
        """Whether the port is open and the service answers a request, within a bound."""
        if not await tcp_open(HOST, self.port):
            return False
        try:
            return await asyncio.wait_for(self._answers(), self.probe_timeout_s)
        except Exception:  # any failure of a probe only means "not answering yet"
            return False
