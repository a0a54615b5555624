"""Exact chat-format token counts, the model → encoding table, caching and local encoding files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_core import (
    ChatFormat,
    ChatMessage,
    EncodingRegistry,
    EncodingUnavailableError,
    TokenCounter,
    ToolCall,
    encoding_for_model,
)

# OpenAI cookbook, "How to count tokens with tiktoken": six messages, four of them named.
# Billed prompt_tokens: 124 for gpt-4o / gpt-4o-mini, 129 for gpt-4 / gpt-3.5-turbo,
# 127 for gpt-3.5-turbo-0301.
COOKBOOK = (
    ChatMessage(
        "system",
        "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    ),
    ChatMessage("system", "New synergies will help drive top-line growth.", "example_user"),
    ChatMessage(
        "system", "Things working well together will increase revenue.", "example_assistant"
    ),
    ChatMessage(
        "system",
        "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
        "example_user",
    ),
    ChatMessage(
        "system",
        "Let's talk later when we're less busy about how to do better.",
        "example_assistant",
    ),
    ChatMessage(
        "user",
        "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    ),
)


def _fresh(encodings: EncodingRegistry, *, cache_size: int = 65_536) -> TokenCounter:
    """A counter of its own, so hit and miss counts start at zero."""
    return TokenCounter(encodings.encoding("o200k_base"), cache_size=cache_size)


# --- exact counts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129), ("gpt-3.5-turbo", 129)],
)
def test_cookbook_prompt_costs_what_openai_bills(
    encodings: EncodingRegistry, model: str, expected: int
) -> None:
    counter = encodings.counter(encoding_for_model(model), model=model)
    assert counter.prompt_tokens(COOKBOOK) == expected


def test_cookbook_prompt_costs_124_tokens_in_o200k_base(counter: TokenCounter) -> None:
    assert counter.name == "o200k_base"
    assert counter.prompt_tokens(COOKBOOK) == 124


def test_cookbook_prompt_costs_129_tokens_in_cl100k_base(encodings: EncodingRegistry) -> None:
    assert encodings.counter("cl100k_base").prompt_tokens(COOKBOOK) == 129


def test_cookbook_prompt_costs_127_tokens_in_the_gpt_35_turbo_0301_format(
    encodings: EncodingRegistry,
) -> None:
    counter = encodings.counter("cl100k_base", model="gpt-3.5-turbo-0301")
    assert counter.chat_format == ChatFormat(tokens_per_message=4, tokens_per_name=-1)
    assert counter.prompt_tokens(COOKBOOK) == 127


def test_p50k_base_counts_with_the_chat_formula(encodings: EncodingRegistry) -> None:
    counter = encodings.counter("p50k_base")
    enc = encodings.encoding("p50k_base")
    content = "Things working well together will increase revenue."
    expected = 3 + len(enc.encode_ordinary("user")) + len(enc.encode_ordinary(content))
    assert counter.name == "p50k_base"
    assert counter.message_tokens("user", content) == expected
    assert counter.prompt_tokens(COOKBOOK) > 0


def test_message_cost_follows_the_documented_formula(counter: TokenCounter) -> None:
    t = counter.text_tokens
    assert counter.message_tokens("user", "hello there") == 3 + t("user") + t("hello there")
    assert counter.message_tokens("user", "hi", name="alice") == 3 + t("user") + t("hi") + 1 + t(
        "alice"
    )


def test_an_empty_name_costs_nothing_as_if_absent(counter: TokenCounter) -> None:
    t = counter.text_tokens
    assert counter.message_tokens("user", "hi", name="") == 3 + t("user") + t("hi")
    assert counter.message_tokens("user", "hi", name="") == counter.message_tokens("user", "hi")
    long_text = "word " * 100  # past the plain cache key: counted under a digest
    assert counter.message_tokens("user", long_text, name="") == counter.message_tokens(
        "user", long_text
    )
    assert counter.prompt_tokens([ChatMessage("user", "hi", name="")]) == counter.prompt_tokens(
        [ChatMessage("user", "hi")]
    )


def test_tool_calls_count_their_name_and_arguments_as_text(counter: TokenCounter) -> None:
    calls = (
        ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_2", "get_time", '{"tz": "Europe/Paris"}'),
    )
    t = counter.text_tokens
    expected = (
        3
        + t("assistant")
        + t("")
        + t("get_weather")
        + t('{"city": "Paris"}')
        + t("get_time")
        + t('{"tz": "Europe/Paris"}')
    )
    assert counter.message_tokens("assistant", "", tool_calls=calls) == expected


def test_prompt_adds_three_tokens_of_reply_priming(counter: TokenCounter) -> None:
    one = ChatMessage("user", "hello")
    assert counter.prompt_tokens([one]) == counter.message_tokens("user", "hello") + 3
    assert counter.prompt_tokens([]) == 3


def test_special_token_strings_count_as_ordinary_text(counter: TokenCounter) -> None:
    assert counter.text_tokens("<|endoftext|>") > 1
    assert counter.message_tokens("user", "<|endoftext|>") > 4


# --- model → encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0301", "cl100k_base"),
        ("text-davinci-003", "p50k_base"),
        ("text-davinci-002", "p50k_base"),
        ("code-davinci-002", "p50k_base"),
        ("code-cushman-001", "p50k_base"),
    ],
)
def test_model_maps_to_the_encoding_it_bills_with(model: str, encoding: str) -> None:
    assert encoding_for_model(model) == encoding


@pytest.mark.parametrize("model", ["llama-3-70b", "claude-3", "", "gpt"])
def test_unknown_model_has_no_encoding(model: str) -> None:
    with pytest.raises(EncodingUnavailableError):
        encoding_for_model(model)


def test_model_with_an_unsupported_encoding_is_refused() -> None:
    # text-davinci-001 uses r50k_base, which memstream does not ship.
    with pytest.raises(EncodingUnavailableError, match="r50k_base"):
        encoding_for_model("text-davinci-001")


def test_only_gpt_35_turbo_0301_uses_the_legacy_chat_format() -> None:
    assert ChatFormat.for_model("gpt-3.5-turbo-0301") == ChatFormat(4, -1, 3)
    for model in (None, "gpt-4o", "gpt-3.5-turbo", "gpt-3.5-turbo-0613"):
        assert ChatFormat.for_model(model) == ChatFormat(3, 1, 3)


# --- caching ------------------------------------------------------------------------------------


def test_counting_the_same_message_twice_hits_the_cache(encodings: EncodingRegistry) -> None:
    counter = _fresh(encodings)
    first = counter.message_tokens("user", "hello world", name="alice")
    second = counter.message_tokens("user", "hello world", name="alice")
    assert first == second
    assert (counter.hits, counter.misses) == (1, 1)


def test_messages_differing_in_any_counted_field_are_cached_apart(
    encodings: EncodingRegistry,
) -> None:
    counter = _fresh(encodings)
    counter.message_tokens("user", "hello")
    counter.message_tokens("assistant", "hello")
    counter.message_tokens("user", "hello", name="bob")
    counter.message_tokens("user", "hello", tool_calls=(ToolCall("c", "f", "{}"),))
    counter.message_tokens("user", "hello!")
    assert (counter.hits, counter.misses) == (0, 5)


def test_cache_forgets_the_least_recently_used_message(encodings: EncodingRegistry) -> None:
    counter = _fresh(encodings, cache_size=2)
    counter.message_tokens("user", "a")
    counter.message_tokens("user", "b")
    counter.message_tokens("user", "a")  # a is now the most recent
    counter.message_tokens("user", "c")  # evicts b
    counter.message_tokens("user", "a")
    assert counter.hits == 2
    counter.message_tokens("user", "b")
    assert counter.misses == 4


def test_registry_shares_one_counter_per_encoding_and_format(encodings: EncodingRegistry) -> None:
    assert encodings.counter("o200k_base") is encodings.counter("o200k_base")
    assert encodings.counter("cl100k_base") is not encodings.counter(
        "cl100k_base", model="gpt-3.5-turbo-0301"
    )
    assert encodings.encoding("o200k_base") is encodings.encoding("o200k_base")


# --- truncate -----------------------------------------------------------------------------------


def test_truncate_keeps_text_that_fits(counter: TokenCounter) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    assert counter.truncate(text, counter.text_tokens(text)) == text


def test_truncate_cuts_to_at_most_the_token_budget(counter: TokenCounter) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 10
    cut = counter.truncate(text, 7)
    assert text.startswith(cut)
    assert 0 < counter.text_tokens(cut) <= 7


@pytest.mark.parametrize("budget", [0, -3])
def test_truncate_to_no_tokens_is_empty(counter: TokenCounter, budget: int) -> None:
    assert counter.truncate("hello", budget) == ""


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=st.characters(codec="utf-8"), max_size=80),
    budget=st.integers(-2, 30),
)
def test_truncate_returns_a_prefix_within_the_bound(
    counter: TokenCounter, text: str, budget: int
) -> None:
    cut = counter.truncate(text, budget)
    assert text.startswith(cut)
    assert counter.text_tokens(cut) <= max(budget, 0)
    if counter.text_tokens(text) <= budget:
        assert cut == text


# --- local encoding files -----------------------------------------------------------------------


def test_missing_encoding_file_is_unavailable(tmp_path: Path) -> None:
    registry = EncodingRegistry(tmp_path)
    with pytest.raises(EncodingUnavailableError, match="missing") as info:
        registry.encoding("o200k_base")
    assert info.value.encoding == "o200k_base"


def test_corrupt_encoding_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "cl100k_base.tiktoken").write_bytes(b"SGVsbG8= 0\nnot a rank line\n")
    with pytest.raises(EncodingUnavailableError, match="hash"):
        EncodingRegistry(tmp_path).encoding("cl100k_base")


def test_truncated_copy_of_a_real_encoding_file_is_unavailable(
    tmp_path: Path, encodings: EncodingRegistry
) -> None:
    real = (encodings.directory / "p50k_base.tiktoken").read_bytes()
    (tmp_path / "p50k_base.tiktoken").write_bytes(real[: len(real) // 2])
    with pytest.raises(EncodingUnavailableError):
        EncodingRegistry(tmp_path).counter("p50k_base")


@pytest.mark.parametrize("name", ["r50k_base", "gpt2", "../o200k_base", ""])
def test_unsupported_encoding_name_is_unavailable(tmp_path: Path, name: str) -> None:
    with pytest.raises(EncodingUnavailableError, match="not supported"):
        EncodingRegistry(tmp_path).encoding(name)


def test_verified_copy_of_an_encoding_file_loads(
    tmp_path: Path, encodings: EncodingRegistry
) -> None:
    real = (encodings.directory / "o200k_base.tiktoken").read_bytes()
    (tmp_path / "o200k_base.tiktoken").write_bytes(real)
    counter = EncodingRegistry(tmp_path).counter("o200k_base")
    assert counter.prompt_tokens(COOKBOOK) == 124


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base", "p50k_base"])
def test_a_loaded_encoding_keeps_no_python_copy_of_its_ranks_and_still_round_trips(
    encodings: EncodingRegistry, name: str
) -> None:
    encoding = encodings.encoding(name)
    assert not encoding._mergeable_ranks  # freed: the Rust core holds the ranks
    text = "Grüße, 世界! tool_call {'a': [1, 2]} \n\n  indented"
    assert encoding.decode(encoding.encode(text)) == text
    assert encoding.n_vocab > 50_000
