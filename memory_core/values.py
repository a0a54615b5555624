"""``Value``: the base of the hot path's immutable value objects.

A ``Value`` is a msgspec ``Struct``: frozen at run time and for ``mypy --strict`` (subclasses
declare ``frozen=True`` too, for the type checker), compared and hashed by its fields, and
built by C code. Building a ``Message`` costs a quarter of a slots dataclass's, and a
frozen dataclass's cost (``object.__setattr__`` per field) was a third of the apply path
(docs/decisions/0005, 0006). ``gc=False``: values are immutable trees that cannot form
reference cycles, so the cycle collector never needs to scan the many a batch creates.
"""

from __future__ import annotations

import msgspec

replace = msgspec.structs.replace
"""A copy of a value with some fields changed; ``__post_init__`` runs again (msgspec ≥ 0.21), so
derived fields such as ``Message.category`` follow."""


class Value(msgspec.Struct, frozen=True, gc=False):
    """Base of the immutable value objects."""
