"""The HTTP API of memstream (``memstream serve``, ``memstream run --roles http``)."""

from consumers.api.routes import build_api

__all__ = ["build_api"]
