"""Redis errors translated to memstream's, in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis import exceptions as rx

from memory_core.errors import StoreUnavailableError


@asynccontextmanager
async def translate_redis_errors() -> AsyncIterator[None]:
    """Turn connection-level Redis failures into a retriable ``StoreUnavailableError``."""
    try:
        yield
    except (rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, OSError) as exc:
        raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
    except (rx.AskError, rx.TryAgainError, rx.ClusterError) as exc:
        # Redis Cluster: a slot moved or is moving, or the cluster is failing over.
        what = type(exc).__name__.removesuffix("Error")
        raise StoreUnavailableError(
            f"Redis Cluster cannot serve the slot now ({what} {exc})"
        ) from exc
    except rx.ResponseError as exc:
        if str(exc).startswith(("LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN")):
            raise StoreUnavailableError(f"Redis cannot serve writes now: {exc}") from exc
        raise
