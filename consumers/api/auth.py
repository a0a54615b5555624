"""Bearer API keys of the HTTP API, each scoped to memory resources and key prefixes."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from consumers.settings import ApiKey, Settings


class AuthError(Exception):
    """A request without a valid key (401) or with a key that may not reach a memory (403)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: an API key, or anyone (``http_auth=none``)."""

    key: ApiKey | None

    @property
    def name(self) -> str:
        """The key's name ("anonymous" without auth)."""
        return self.key.name if self.key is not None else "anonymous"

    def allows(self, memory_id: str, memory_key: str) -> bool:
        """Whether this caller may reach ``memory_key`` of ``memory_id``."""
        return self.key is None or self.key.allows(memory_id, memory_key)

    def check(self, memory_id: str, memory_key: str) -> None:
        """``AuthError`` 403 unless this caller may reach the memory."""
        key = self.key
        if key is not None and not key.allows(memory_id, memory_key):
            raise AuthError(
                403,
                "forbidden",
                f"API key {key.name!r} may not reach memory {memory_key} of resource "
                f"{memory_id} (it is scoped to resources {list(key.resources)} and key "
                f"prefixes {list(key.key_prefixes)})",
            )


class Authenticator:
    """Finds the API key of a request's ``Authorization: Bearer`` header."""

    def __init__(self, settings: Settings) -> None:
        self._open = settings.http_auth == "none"
        self._keys = [(k, k.key.get_secret_value().encode()) for k in settings.api_keys]

    def caller(self, authorization: str | None) -> Caller:
        """The caller, or ``AuthError`` 401."""
        if self._open:
            return Caller(None)
        if not authorization:
            raise AuthError(401, "unauthorized", "send Authorization: Bearer <API key>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "unauthorized", "send Authorization: Bearer <API key>")
        given = token.strip().encode()
        found = None
        for key, secret in self._keys:
            # Every key compared in constant time: no timing tells which one is close.
            if hmac.compare_digest(given, secret):
                found = key
        if found is None:
            raise AuthError(401, "unauthorized", "unknown API key")
        return Caller(found)
