"""Memory resource configs: YAML shapes, validation naming field and rule, budgets, fingerprint."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from memory_core import (
    ConfigError,
    ConfigErrors,
    MemoryConfig,
    Role,
    load_configs,
    parse_config,
)

ONE = """
id: support
key: "agent:{agent_id}:user:{user_id}"
max_tokens: 2000
"""


def _config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": "support", "key": "agent:{agent_id}", "max_tokens": 1000}
    data.update(overrides)
    return data


def _errors(data: Any) -> dict[str, str]:
    """The {field: rule} map of the errors parsing ``data`` raises."""
    with pytest.raises(ConfigErrors) as info:
        parse_config(data)
    return {e.field: e.rule for e in info.value.errors}


# --- YAML shapes --------------------------------------------------------------------------------


def test_single_document_is_one_memory_with_defaults() -> None:
    [config] = load_configs(ONE)
    assert config.id == "support"
    assert config.model == "gpt-4o"
    assert config.encoding_name == "o200k_base"
    assert config.max_messages is None
    assert config.flushing.threshold == 0.8
    assert config.persistence.ttl == timedelta(days=7)
    assert config.key_template.fields == ("agent_id", "user_id")


def test_memories_list_gives_every_memory_in_order() -> None:
    text = """
memories:
  - {id: a, key: "a:{x}", max_tokens: 100}
  - {id: b, key: "b:{x}", max_tokens: 200, model: gpt-4}
"""
    configs = load_configs(text)
    assert [(c.id, c.max_tokens, c.encoding_name) for c in configs] == [
        ("a", 100, "o200k_base"),
        ("b", 200, "cl100k_base"),
    ]


def test_several_documents_give_one_memory_each_and_empty_ones_are_ignored() -> None:
    text = """
id: a
key: "a:{x}"
max_tokens: 100
---
---
memories:
  - {id: b, key: "b:{x}", max_tokens: 200}
  - {id: c, key: "c:{x}", max_tokens: 300, encoding: p50k_base}
"""
    assert [c.id for c in load_configs(text)] == ["a", "b", "c"]


def test_empty_yaml_has_no_memories() -> None:
    assert load_configs("") == []
    assert load_configs("# nothing\n") == []


def test_the_shipped_memories_file_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "memories.yaml"
    configs = load_configs(path.read_text())
    assert configs
    assert len({c.id for c in configs}) == len(configs)


def test_invalid_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_configs("id: [unclosed\n")
    assert info.value.field == "<yaml>"


def test_memories_that_is_not_a_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_configs("memories: {id: a}\n")
    assert info.value.field == "memories"


def test_duplicate_ids_across_documents_are_refused_naming_the_id() -> None:
    text = """
memories:
  - {id: a, key: "a:{x}", max_tokens: 100}
  - {id: b, key: "b:{x}", max_tokens: 100}
---
{id: a, key: "c:{x}", max_tokens: 100}
"""
    with pytest.raises(ConfigError) as info:
        load_configs(text)
    assert info.value.field == "id"
    assert "unique" in info.value.rule
    assert "a" in info.value.rule.split(":")[-1]


def test_error_in_a_listed_memory_names_its_resource_and_field() -> None:
    with pytest.raises(ConfigErrors) as info:
        load_configs('memories:\n  - {id: a, key: "a:{x}", max_tokens: -1}\n')
    assert [e.field for e in info.value.errors] == ["memories[0] (a).max_tokens"]


def test_every_invalid_resource_is_reported_at_once() -> None:
    text = (
        "memories:\n"
        '  - {id: a, key: "a:{x}", max_tokens: -1}\n'
        '  - {id: ok, key: "o:{x}", max_tokens: 10}\n'
        '  - {key: "b:{x}", max_tokens: 5, flushing: {threshold: 2}}\n'
    )
    with pytest.raises(ConfigErrors) as info:
        load_configs(text)
    fields = [e.field for e in info.value.errors]
    assert fields[0] == "memories[0] (a).max_tokens"
    assert "memories[2].id" in fields and "memories[2].flushing.threshold" in fields


def test_an_error_in_one_of_several_documents_names_the_document() -> None:
    text = 'id: a\nkey: "a:{x}"\nmax_tokens: 10\n---\nid: b\nkey: "b:{x}"\nmax_tokens: 0\n'
    with pytest.raises(ConfigErrors) as info:
        load_configs(text)
    assert [e.field for e in info.value.errors] == ["document 2 (b).max_tokens"]


def test_invalid_yaml_names_the_source_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_configs("memories:\n  - id: [\n", "memories.yaml")
    assert info.value.field == "memories.yaml"
    assert info.value.rule.startswith("not valid YAML at line 3")
    assert "\n" not in str(info.value)


# --- validation: each error names its field and rule --------------------------------------------


def test_allocation_not_summing_to_one_is_refused() -> None:
    errors = _errors(_config(token_allocation={"system": 0.2, "short_term": 0.7, "long_term": 0.2}))
    assert list(errors) == ["token_allocation"]
    assert "sum to 1" in errors["token_allocation"]


def test_allocation_share_above_one_is_refused() -> None:
    errors = _errors(_config(token_allocation={"system": 0, "short_term": 1.5, "long_term": -0.5}))
    assert "token_allocation.short_term" in errors
    assert "token_allocation.long_term" in errors


@pytest.mark.parametrize("threshold", [1.01, 2, 0, -0.5])
def test_threshold_outside_zero_to_one_is_refused(threshold: float) -> None:
    errors = _errors(_config(flushing={"threshold": threshold}))
    assert list(errors) == ["flushing.threshold"]
    assert "1" in errors["flushing.threshold"] or "0" in errors["flushing.threshold"]


def test_threshold_above_one_names_the_bound() -> None:
    errors = _errors(_config(flushing={"threshold": 1.5}))
    assert "less than or equal to 1" in errors["flushing.threshold"]


@pytest.mark.parametrize(
    ("flushing", "field"),
    [
        ({"summarize_oldest_percent": 0}, "flushing.summarize_oldest_percent"),
        ({"summarize_oldest_percent": 1.2}, "flushing.summarize_oldest_percent"),
        ({"summary_recent_messages": -1}, "flushing.summary_recent_messages"),
        ({"summary_tokens": 0}, "flushing.summary_tokens"),
        ({"retry_after": 0}, "flushing.retry_after"),
        ({"retry_after": "0ms"}, "flushing.retry_after"),
        ({"retry_after": "soon"}, "flushing.retry_after"),
    ],
)
def test_flushing_settings_out_of_range_are_refused(flushing: dict[str, Any], field: str) -> None:
    assert list(_errors(_config(flushing=flushing))) == [field]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_messages": 0}, "max_messages"),
        ({"id": "has space"}, "id"),
        ({"id": ""}, "id"),
        ({"key": ""}, "key"),
        ({"colour": "blue"}, "colour"),
        ({"flushing": {"thresold": 0.5}}, "flushing.thresold"),
    ],
)
def test_invalid_field_is_named(overrides: dict[str, Any], field: str) -> None:
    assert field in _errors(_config(**overrides))


def test_missing_required_fields_are_each_named() -> None:
    errors = _errors({"model": "gpt-4o"})
    assert {"id", "key", "max_tokens"} <= set(errors)


def test_several_broken_fields_are_reported_together() -> None:
    errors = _errors(_config(max_tokens=-5, flushing={"threshold": 3}))
    assert {"max_tokens", "flushing.threshold"} <= set(errors)


def test_unknown_encoding_is_refused_listing_the_supported_ones() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config(_config(encoding="r50k_base"))
    [error] = info.value.errors
    assert "o200k_base" in error.rule
    assert "r50k_base" in error.rule


def test_unknown_encoding_error_names_the_encoding_field() -> None:
    errors = _errors(_config(encoding="r50k_base"))
    assert "encoding" in errors


def test_unknown_model_without_encoding_is_a_config_error_naming_the_model() -> None:
    errors = _errors(_config(model="llama-3-70b"))
    assert "model" in errors


def test_unknown_model_with_an_explicit_encoding_is_accepted() -> None:
    config = parse_config(_config(model="llama-3-70b", encoding="cl100k_base"))
    assert config.encoding_name == "cl100k_base"


def test_explicit_encoding_overrides_the_models() -> None:
    assert parse_config(_config(model="gpt-4o", encoding="p50k_base")).encoding_name == "p50k_base"


def test_redact_pattern_that_does_not_compile_is_refused() -> None:
    errors = _errors(_config(privacy={"redact_patterns": ["ok", "(unclosed"]}))
    assert list(errors) == ["privacy.redact_patterns"]
    assert "(unclosed" in errors["privacy.redact_patterns"]


def test_unknown_non_persistable_role_is_refused() -> None:
    assert "privacy.non_persistable_roles.0" in _errors(
        _config(privacy={"non_persistable_roles": ["robot"]})
    )


def test_non_persistable_roles_parse_to_roles() -> None:
    config = parse_config(_config(privacy={"non_persistable_roles": ["tool"]}))
    assert config.privacy.non_persistable_roles == (Role.TOOL,)


@pytest.mark.parametrize("key", ["agent {agent_id}", "a:{"])
def test_bad_key_template_is_a_config_error_naming_the_key(key: str) -> None:
    errors = _errors(_config(key=key))
    assert "key" in errors


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("15m", timedelta(minutes=15)),
        ("90s", timedelta(seconds=90)),
        ("90", timedelta(seconds=90)),
        (90, timedelta(seconds=90)),
        (" 2 h ", timedelta(hours=2)),
    ],
)
def test_persistence_ttl_accepts_durations(text: str | int, expected: timedelta) -> None:
    assert parse_config(_config(persistence={"ttl": text})).persistence.ttl == expected


def test_millisecond_durations_are_exact() -> None:
    locking = parse_config(
        _config(locking={"ttl": "250ms", "retry_backoff": "20ms", "acquire_timeout": "1500ms"})
    ).locking
    assert locking.ttl == timedelta(milliseconds=250)
    assert locking.retry_backoff == timedelta(milliseconds=20)
    assert locking.acquire_timeout == timedelta(milliseconds=1500)


@pytest.mark.parametrize("text", ["7w", "seven days", "-3s", "ms", "7 d s"])
def test_malformed_duration_is_refused_naming_the_field(text: str) -> None:
    errors = _errors(_config(persistence={"ttl": text}))
    assert list(errors) == ["persistence.ttl"]


def test_flush_retry_after_defaults_to_five_minutes_and_takes_durations() -> None:
    assert parse_config(_config()).flushing.retry_after == timedelta(minutes=5)
    flushing = parse_config(_config(flushing={"retry_after": "90s"})).flushing
    assert flushing.retry_after == timedelta(seconds=90)
    flushing = parse_config(_config(flushing={"retry_after": "1ms"})).flushing
    assert flushing.retry_after == timedelta(milliseconds=1)


def test_memory_ttl_below_one_second_is_refused() -> None:
    errors = _errors(_config(persistence={"ttl": "999ms"}))
    assert "at least 1s" in errors["persistence.ttl"]


def test_lock_ttl_below_100ms_is_refused() -> None:
    errors = _errors(_config(locking={"ttl": "50ms"}))
    assert "at least 100ms" in errors["locking.ttl"]


# --- budgets ------------------------------------------------------------------------------------


def test_budget_is_the_floor_of_each_share() -> None:
    budget = parse_config(_config(max_tokens=1001)).budget
    assert (budget.system, budget.short_term, budget.long_term) == (100, 700, 200)
    budget = parse_config(_config(max_tokens=999)).budget
    assert (budget.system, budget.short_term, budget.long_term) == (99, 699, 199)
    assert budget.max_tokens == 999


def test_budget_carries_the_message_cap() -> None:
    assert parse_config(_config(max_messages=40)).budget.max_messages == 40
    assert parse_config(_config()).budget.max_messages is None


@pytest.mark.parametrize(
    ("max_tokens", "allocation", "expected"),
    [
        # 0.7 × 90 is 63 exactly; in binary floating point it is 62.99999999999999.
        (90, {"system": 0.1, "short_term": 0.7, "long_term": 0.2}, (9, 63, 18)),
        # 0.29 × 100 is 29 exactly; in binary floating point it is 28.999999999999996.
        (100, {"system": 0.01, "short_term": 0.7, "long_term": 0.29}, (1, 70, 29)),
    ],
)
def test_budget_floor_is_exact_for_decimal_shares(
    max_tokens: int, allocation: dict[str, float], expected: tuple[int, int, int]
) -> None:
    budget = parse_config(_config(max_tokens=max_tokens, token_allocation=allocation)).budget
    assert (budget.system, budget.short_term, budget.long_term) == expected


# --- fingerprint --------------------------------------------------------------------------------


def test_fingerprint_is_stable_across_parses_and_key_order() -> None:
    a = parse_config(_config(flushing={"threshold": 0.5, "summary_tokens": 100}))
    b = parse_config(
        {
            "max_tokens": 1000,
            "flushing": {"summary_tokens": 100, "threshold": 0.5},
            "key": "agent:{agent_id}",
            "id": "support",
        }
    )
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    int(a.fingerprint(), 16)


def test_fingerprint_of_spelled_out_defaults_equals_the_short_form() -> None:
    short = parse_config(_config())
    spelled = parse_config(
        _config(
            model="gpt-4o",
            token_allocation={"system": 0.1, "short_term": 0.7, "long_term": 0.2},
            persistence={"ttl": "7d"},
            flushing={"retry_after": "5m"},
        )
    )
    assert short.fingerprint() == spelled.fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 1001},
        {"max_messages": 10},
        {"flushing": {"threshold": 0.5}},
        {"flushing": {"retry_after": "10m"}},
        {"persistence": {"ttl": "1d"}},
        {"privacy": {"redact_patterns": ["x"]}},
        {"encoding": "cl100k_base"},
    ],
)
def test_fingerprint_changes_with_any_setting(change: dict[str, Any]) -> None:
    assert parse_config(_config()).fingerprint() != parse_config(_config(**change)).fingerprint()


def test_config_is_frozen() -> None:
    config: MemoryConfig = parse_config(_config())
    with pytest.raises(ValueError, match="frozen"):
        config.max_tokens = 5
