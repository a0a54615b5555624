"""Operator commands of the ``memstream`` CLI: topic generations, partitions, dead letters."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the operator commands to ``app``."""
