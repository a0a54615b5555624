"""``value``: the decorator of the hot path's immutable value objects.

The type checker treats a ``@value`` class as a frozen dataclass (assignment is an error under
``mypy --strict``); at run time it is a plain slots dataclass with a field hash. A frozen
dataclass sets each field through ``object.__setattr__``, which made building a ``Message``
cost 3 µs instead of 1 µs: a third of the apply path (docs/decisions/0005).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from typing_extensions import dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value(cls: type[T]) -> type[T]:
    """A slots dataclass, frozen for the type checker, hashable by its compared fields."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
