"""Redaction of every free-text field, with the patterns memstream ships, on realistic text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memory_core import Draft, PrivacyConfig, PrivacyPolicy, Role, ToolCall, load_configs
from memory_core.values import replace

SHIPPED = Path(__file__).resolve().parents[2] / "memories.yaml"


@pytest.fixture(scope="module")
def shipped() -> PrivacyPolicy:
    """The privacy policy of the shipped support-agent memory."""
    (config,) = [c for c in load_configs(SHIPPED.read_text()) if c.id == "support-agent"]
    return PrivacyPolicy(config.privacy)


def _draft(**fields: Any) -> Draft:
    return replace(Draft("m1", Role.USER, "", 0), **fields)


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        pytest.param(
            "my card is 4111 1111 1111 1111 thanks",
            "my card is [REDACTED] thanks",
            id="spaced-card-followed-by-a-word",
        ),
        pytest.param(
            "card 4111111111111111 expires 12/27",
            "card [REDACTED] expires 12/27",
            id="plain-card-followed-by-a-word",
        ),
        pytest.param(
            "use 5500-0000-0000-0004, please",
            "use [REDACTED], please",
            id="dashed-card-then-comma",
        ),
        pytest.param("amex 378282246310005.", "amex [REDACTED].", id="15-digit-card-then-dot"),
        pytest.param(
            "4111 1111 1111 1111\nnext line", "[REDACTED]\nnext line", id="card-then-newline"
        ),
        pytest.param(
            "write to bob.smith+tag@mail.example.co.uk today",
            "write to [REDACTED] today",
            id="email",
        ),
        pytest.param("mail bob@example.com.", "mail [REDACTED].", id="email-then-dot"),
        pytest.param(
            "order 12345 shipped on 2024-06-11, call 555 0100",
            "order 12345 shipped on 2024-06-11, call 555 0100",
            id="short-numbers-kept",
        ),
    ],
)
def test_shipped_patterns_redact_exactly_the_sensitive_text(
    shipped: PrivacyPolicy, text: str, redacted: str
) -> None:
    assert shipped.redact(text) == redacted


def test_an_email_in_metadata_is_redacted_and_the_keys_are_kept(shipped: PrivacyPolicy) -> None:
    draft = _draft(metadata={"contact": "bob@example.com", "channel": "web"})
    assert dict(shipped.redact_draft(draft).metadata) == {
        "contact": "[REDACTED]",
        "channel": "web",
    }


def test_a_card_number_in_tool_arguments_is_redacted_and_the_call_ids_are_kept(
    shipped: PrivacyPolicy,
) -> None:
    call = ToolCall("call_4111111111111111", "charge_card", '{"card": "4111 1111 1111 1111"}')
    draft = _draft(role=Role.ASSISTANT, tool_calls=(call,))
    assert shipped.redact_draft(draft).tool_calls == (
        ToolCall("call_4111111111111111", "charge_card", '{"card": "[REDACTED]"}'),
    )


def test_redact_draft_covers_content_and_name_and_keeps_identifiers(
    shipped: PrivacyPolicy,
) -> None:
    draft = _draft(
        id="bob@example.com",
        role=Role.TOOL,
        content="paid with 4111 1111 1111 1111 ok",
        name="bob@example.com",
        tool_call_id="bob@example.com",
        created_at_ms=7,
    )
    redacted = shipped.redact_draft(draft)
    assert redacted.content == "paid with [REDACTED] ok"
    assert redacted.name == "[REDACTED]"
    assert (redacted.id, redacted.tool_call_id, redacted.role, redacted.created_at_ms) == (
        "bob@example.com",
        "bob@example.com",
        Role.TOOL,
        7,
    )


def test_an_empty_name_becomes_absent_with_or_without_patterns(shipped: PrivacyPolicy) -> None:
    plain = PrivacyPolicy(PrivacyConfig())
    assert plain.redact_draft(_draft(name="")).name is None
    assert shipped.redact_draft(_draft(name="")).name is None


def test_a_name_redacted_to_nothing_becomes_absent() -> None:
    erasing = PrivacyPolicy(PrivacyConfig(redact_patterns=(r"\S+@\S+",), redaction=""))
    assert erasing.redact_draft(_draft(name="bob@example.com")).name is None


def test_without_patterns_a_draft_is_returned_as_it_is() -> None:
    plain = PrivacyPolicy(PrivacyConfig())
    assert not plain.redacts
    draft = _draft(
        content="bob@example.com",
        name="bob",
        metadata={"m": "bob@example.com"},
        tool_calls=(ToolCall("c", "f", "bob@example.com"),),
    )
    assert plain.redact_draft(draft) is draft


def test_a_custom_marker_replaces_each_match() -> None:
    policy = PrivacyPolicy(PrivacyConfig(redact_patterns=(r"secret\d+",), redaction="***"))
    assert policy.redact("a secret1 and secret22") == "a *** and ***"


def test_a_key_digest_is_stable_short_and_hides_the_key() -> None:
    from memory_core.privacy import key_digest, shown_key
    from memory_core.temporal import workflow_id

    key = "agent:a1:user:alice@example.com"
    digest = key_digest(key)
    assert digest == key_digest(key) and digest != key_digest(key + "x")
    assert digest.startswith("k") and len(digest) == 17 and "alice" not in digest
    assert shown_key(key, True) == key and shown_key(key, False) == digest
    assert workflow_id(key, 3, 41, "ns") == f"flush:ns:{digest}:3@41"
    assert workflow_id(key, 3, 41, "ns", show_key=True) == f"flush:ns:{key}:3@41"
