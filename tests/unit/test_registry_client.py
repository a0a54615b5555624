"""The registry client's request headers (what a registry with basic auth receives)."""

from __future__ import annotations

import base64

from schemas import ConfluentRegistry


def test_basic_auth_is_sent_with_every_request() -> None:
    client = ConfluentRegistry("https://registry.example", auth=("user", "pa:ss"))
    header = client._headers["Authorization"]
    assert header == "Basic " + base64.b64encode(b"user:pa:ss").decode()


def test_no_credentials_no_authorization_header() -> None:
    assert "Authorization" not in ConfluentRegistry("http://r.example")._headers
