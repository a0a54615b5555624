"""Memory keys: templates render only safe values, and every unsafe key is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memory_core import InvalidKeyError, KeyTemplate, validate_memory_key

TEMPLATE = KeyTemplate("agent:{agent_id}:user:{user_id}")


def test_template_renders_its_values_in_place() -> None:
    assert TEMPLATE.render(agent_id="support", user_id="u-42") == "agent:support:user:u-42"


def test_template_lists_its_fields_once_in_order() -> None:
    assert TEMPLATE.fields == ("agent_id", "user_id")
    twice = KeyTemplate("{tenant}:{user}:{tenant}")
    assert twice.fields == ("tenant", "user")
    assert twice.render(tenant="t1", user="u1") == "t1:u1:t1"


def test_template_without_placeholders_renders_itself() -> None:
    assert KeyTemplate("memstream/static").render() == "memstream/static"


def test_extra_context_values_are_ignored() -> None:
    assert TEMPLATE.render(agent_id="a", user_id="b", other="x y") == "agent:a:user:b"


@pytest.mark.parametrize(
    "value",
    ["a", "A.b_c@d+e=f-g", "user@example.com", "0", "x" * 128, "550e8400-e29b-41d4"],
)
def test_allowed_values_render(value: str) -> None:
    assert TEMPLATE.render(agent_id="a", user_id=value) == f"agent:a:user:{value}"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("bob:admin", id="key-separator"),
        pytest.param("a/b", id="slash"),
        pytest.param("{hash}", id="hash-tag-braces"),
        pytest.param("a}b", id="closing-brace"),
        pytest.param("*", id="wildcard-star"),
        pytest.param("a?", id="wildcard-question"),
        pytest.param("[ab]", id="wildcard-class"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("a b", id="space"),
        pytest.param("a\tb", id="tab"),
        pytest.param(" a", id="leading-space"),
        pytest.param("a\nb", id="newline-inside"),
        pytest.param("\na", id="leading-newline"),
        pytest.param("a\rb", id="carriage-return"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\x1bb", id="escape"),
        pytest.param("a\x7fb", id="delete"),
        pytest.param("é", id="non-ascii"),
        pytest.param("a\u200bb", id="zero-width-space"),
        pytest.param("", id="empty"),
        pytest.param("x" * 129, id="over-long"),
    ],
)
def test_unsafe_value_is_refused_naming_its_field(value: str) -> None:
    with pytest.raises(InvalidKeyError, match="user_id"):
        TEMPLATE.render(agent_id="a", user_id=value)


def test_unsafe_value_in_the_first_field_is_refused_naming_that_field() -> None:
    with pytest.raises(InvalidKeyError, match="agent_id"):
        TEMPLATE.render(agent_id="a:b", user_id="u")


def test_value_ending_in_a_newline_is_refused() -> None:
    # A control character at the very end of a value must not slip through.
    with pytest.raises(InvalidKeyError, match="user_id"):
        TEMPLATE.render(agent_id="a", user_id="bob\n")


def test_non_string_value_is_refused() -> None:
    with pytest.raises(InvalidKeyError, match="user_id"):
        TEMPLATE.render(agent_id="a", user_id=42)  # type: ignore[arg-type]


def test_missing_values_are_named() -> None:
    with pytest.raises(InvalidKeyError, match="user_id"):
        TEMPLATE.render(agent_id="a")
    with pytest.raises(InvalidKeyError, match="agent_id, user_id"):
        TEMPLATE.render()


def test_rendered_key_longer_than_256_characters_is_refused() -> None:
    template = KeyTemplate("p" * 200 + ":{a}")
    assert len(template.render(a="x" * 55)) == 256
    with pytest.raises(InvalidKeyError, match="256"):
        template.render(a="x" * 56)


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("agent:{agent_id!r}", id="conversion"),
        pytest.param("agent:{agent_id:>8}", id="format-spec"),
        pytest.param("agent:{0}", id="positional"),
        pytest.param("agent:{}", id="anonymous"),
        pytest.param("agent:{a.b}", id="attribute"),
        pytest.param("agent:{a[0]}", id="index"),
        pytest.param("agent {agent_id}", id="space-in-literal"),
        pytest.param("agent*:{agent_id}", id="wildcard-in-literal"),
        pytest.param("{{agent}}:{id}", id="escaped-braces"),
        pytest.param("agent:{agent_id", id="unclosed"),
        pytest.param("agent:}", id="single-closing"),
        pytest.param("", id="empty"),
    ],
)
def test_malformed_template_is_refused(template: str) -> None:
    with pytest.raises(InvalidKeyError):
        KeyTemplate(template)


# --- parsing a key back -----------------------------------------------------------------------


def test_a_rendered_key_parses_back_to_its_values() -> None:
    assert TEMPLATE.parse("agent:support:user:u-42") == {"agent_id": "support", "user_id": "u-42"}
    assert TEMPLATE.matches("agent:support:user:u-42")


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("foo", id="no-literals"),
        pytest.param("agent:a:user:", id="empty-value"),
        pytest.param("agent::user:b", id="empty-first-value"),
        pytest.param("agent:a:b:user:c", id="separator-inside-a-value"),
        pytest.param("agent:a/b:user:c", id="slash-inside-a-value"),
        pytest.param("agent:a:user:b:extra", id="trailing-text"),
        pytest.param("xagent:a:user:b", id="leading-text"),
        pytest.param("Agent:a:user:b", id="literal-case"),
        pytest.param("agent:a:user:b\n", id="trailing-newline"),
        pytest.param("agent:a:user:" + "x" * 129, id="over-long-value"),
    ],
)
def test_a_key_the_template_cannot_render_does_not_match(key: str) -> None:
    assert TEMPLATE.parse(key) is None
    assert not TEMPLATE.matches(key)


def test_literal_dots_in_a_template_match_only_dots() -> None:
    template = KeyTemplate("team.{t}:s.{s}")
    assert template.matches("team.a:s.b")
    assert not template.matches("teamXa:sYb")


def test_a_repeated_placeholder_matches_only_the_same_value_twice() -> None:
    twice = KeyTemplate("{tenant}:{user}:{tenant}")
    assert twice.parse("t1:u1:t1") == {"tenant": "t1", "user": "u1"}
    assert not twice.matches("t1:u1:t2")


def test_a_template_without_placeholders_matches_only_itself() -> None:
    static = KeyTemplate("memstream/static")
    assert static.parse("memstream/static") == {}
    assert not static.matches("memstream/other")


def test_a_key_over_256_characters_never_matches() -> None:
    template = KeyTemplate("p" * 200 + ":{a}")
    assert template.matches("p" * 200 + ":" + "x" * 55)
    assert not template.matches("p" * 200 + ":" + "x" * 56)


_VALUES = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@+=-",
    min_size=1,
    max_size=40,
)


@given(agent_id=_VALUES, user_id=_VALUES)
def test_every_rendered_key_matches_and_renders_again_from_what_parses(
    agent_id: str, user_id: str
) -> None:
    key = TEMPLATE.render(agent_id=agent_id, user_id=user_id)
    values = TEMPLATE.parse(key)
    assert values is not None
    assert TEMPLATE.render(**values) == key


@given(a=_VALUES, b=_VALUES)
def test_a_key_with_ambiguous_splits_still_renders_back(a: str, b: str) -> None:
    template = KeyTemplate("{a}-{b}")  # "-" is allowed inside values too
    key = template.render(a=a, b=b)
    values = template.parse(key)
    assert values is not None
    assert template.render(**values) == key


# --- validate_memory_key ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["memstream:agent:a:user:b", "a", "k/with/slashes", "x" * 256, "e=mc2+1@x.y_z-w"]
)
def test_safe_memory_key_is_returned_unchanged(key: str) -> None:
    assert validate_memory_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 257, id="over-long"),
        pytest.param("agent:*", id="wildcard"),
        pytest.param("agent:{a}", id="braces"),
        pytest.param("agent: a", id="space"),
        pytest.param("agent:\x00", id="nul"),
        pytest.param("agent:\na", id="newline-inside"),
        pytest.param("agent:[a]", id="class"),
        pytest.param("agent:ä", id="non-ascii"),
    ],
)
def test_unsafe_memory_key_is_refused(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_memory_key(key)


def test_memory_key_ending_in_a_newline_is_refused() -> None:
    with pytest.raises(InvalidKeyError):
        validate_memory_key("agent:a:user:b\n")


def test_refusal_keeps_control_characters_out_of_the_reported_value() -> None:
    with pytest.raises(InvalidKeyError) as info:
        validate_memory_key("agent:\x1b[31m")
    assert info.value.value is not None
    assert "\x1b" not in info.value.value
    assert "\x1b" not in str(info.value)
