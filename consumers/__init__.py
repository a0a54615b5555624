"""memstream's processes: settings, composition root, producer SDK, consumers and CLI."""

from consumers.bootstrap import App, build_app
from consumers.catalog import MemoryCatalog
from consumers.producer import MemoryProducer
from consumers.runner import RoleFailedError, Runner
from consumers.settings import Settings

__all__ = [
    "App",
    "MemoryCatalog",
    "MemoryProducer",
    "RoleFailedError",
    "Runner",
    "Settings",
    "build_app",
]
