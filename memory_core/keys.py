"""Memory keys: templates rendered from context, and the checks that keep keys in their slot."""

from __future__ import annotations

import functools
import re
import string

from memory_core.errors import InvalidKeyError

MAX_KEY_LENGTH = 256
MAX_VALUE_LENGTH = 128
# Values are an allowlist: anything else could forge a separator, escape the Redis hash tag
# ({...}), act as a SCAN/KEYS wildcard or hide in logs (control characters).
_VALUE = re.compile(r"[A-Za-z0-9._@+=-]+")
_LITERAL = re.compile(r"[A-Za-z0-9._@+=:/-]*")
_KEY = re.compile(r"[A-Za-z0-9._@+=:/-]+")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.lru_cache(maxsize=65_536)
def validate_memory_key(key: str) -> str:
    """Return ``key`` if it is a safe memory key, else raise ``InvalidKeyError``."""
    if not key:
        raise InvalidKeyError("memory key is empty", value=key)
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(
            f"memory key is {len(key)} characters, the limit is {MAX_KEY_LENGTH}", value=key[:64]
        )
    if not _KEY.fullmatch(key):
        bad = sorted({c for c in key if not _KEY.fullmatch(c)})
        raise InvalidKeyError(
            f"memory key holds forbidden characters {''.join(bad)!r} "
            "(allowed: letters, digits and . _ @ + = : / -)",
            value=key[:64].encode("unicode_escape").decode(),
        )
    return key


class KeyTemplate:
    """A key template such as ``agent:{agent_id}:user:{user_id}``."""

    __slots__ = ("_parts", "_regex", "fields", "template")

    def __init__(self, template: str) -> None:
        self.template = template
        parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise InvalidKeyError(f"key template {template!r}: {exc}", value=template) from None
        for literal, field, spec, conversion in parsed:
            if not _LITERAL.fullmatch(literal):
                raise InvalidKeyError(
                    f"key template {template!r}: literal text {literal!r} holds forbidden "
                    "characters",
                    value=template,
                )
            if field is not None and (not _FIELD.fullmatch(field) or spec or conversion):
                raise InvalidKeyError(
                    f"key template {template!r}: placeholder {{{field}}} must be a plain name",
                    value=template,
                )
            parts.append((literal, field))
        self._parts = tuple(parts)
        self.fields = tuple(dict.fromkeys(f for _, f in parts if f is not None))
        if not self.fields and not template:
            raise InvalidKeyError("key template is empty", value=template)
        self._regex = _template_regex(self._parts)

    def render(self, **context: str) -> str:
        """Render the key; every value is checked so it cannot escape its slot."""
        missing = [f for f in self.fields if f not in context]
        if missing:
            raise InvalidKeyError(
                f"key template {self.template!r} needs {', '.join(missing)}", value=self.template
            )
        out: list[str] = []
        for literal, field in self._parts:
            out.append(literal)
            if field is not None:
                out.append(_check_value(field, context[field]))
        return validate_memory_key("".join(out))

    def parse(self, key: str) -> dict[str, str] | None:
        """The values ``key`` renders from, or None if this template cannot render it.

        A key renders from this template exactly when it parses; where the literals allow
        several splits (``{a}-{b}`` and ``x-y-z``), one of them is returned.
        """
        if len(key) > MAX_KEY_LENGTH:
            return None
        match = self._regex.fullmatch(key)
        return None if match is None else match.groupdict()

    def matches(self, key: str) -> bool:
        """Whether this template can render ``key``."""
        return len(key) <= MAX_KEY_LENGTH and self._regex.fullmatch(key) is not None

    def __repr__(self) -> str:
        return f"KeyTemplate({self.template!r})"


def _template_regex(parts: tuple[tuple[str, str | None], ...]) -> re.Pattern[str]:
    # Each placeholder takes a value as render accepts it; a repeated placeholder must repeat
    # the same value (a backreference), as render writes it.
    out: list[str] = []
    named: set[str] = set()
    for literal, field in parts:
        out.append(re.escape(literal))
        if field is None:
            continue
        if field in named:
            out.append(f"(?P={field})")
        else:
            named.add(field)
            out.append(f"(?P<{field}>[A-Za-z0-9._@+=-]{{1,{MAX_VALUE_LENGTH}}})")
    return re.compile("".join(out))


def _check_value(field: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidKeyError(f"key value {field} must be a non-empty string", value=repr(value))
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidKeyError(
            f"key value {field} is {len(value)} characters, the limit is {MAX_VALUE_LENGTH}",
            value=value[:64],
        )
    if not _VALUE.fullmatch(value):
        bad = sorted({c for c in value if not _VALUE.fullmatch(c)})
        raise InvalidKeyError(
            f"key value {field} holds forbidden characters "
            f"{''.join(bad).encode('unicode_escape').decode()!r} "
            "(allowed: letters, digits and . _ @ + = -)",
            value=value[:64].encode("unicode_escape").decode(),
        )
    return value
