"""Token counting: memstream's cached chat-format counter against raw ``tiktoken.encode``."""

from __future__ import annotations

import random
import time

from benchmarks.common import Result
from consumers.settings import Settings
from memory_core import EncodingRegistry, TokenCounter

WORDS = [
    "the",
    "order",
    "shipped",
    "yesterday",
    "please",
    "refund",
    "my",
    "card",
    "account",
    "password",
    "weather",
    "Paris",
    "invoice",
    "error",
    "timeout",
    "retry",
    "kafka",
    "redis",
    "memory",
    "token",
    "budget",
    "summary",
    "agent",
    "tool",
    "call",
]


def _messages(n: int, distinct: int, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pool = [
        (rng.choice(["user", "assistant"]), " ".join(rng.choices(WORDS, k=rng.randint(5, 60))))
        for _ in range(distinct)
    ]
    return [rng.choice(pool) for _ in range(n)]


def run(settings: Settings, *, n: int = 20_000) -> Result:
    """Messages/s: raw encode of each content vs the counter cold (all misses) and warm."""
    registry = EncodingRegistry(settings.resolved_encodings_dir)
    encoding = registry.encoding("o200k_base")
    # A realistic stream repeats content (redeliveries, replays, the same prompts): 25 % distinct.
    msgs = _messages(n, distinct=n // 4)

    started = time.perf_counter()
    for _role, content in msgs:
        len(encoding.encode(content))
    raw = n / (time.perf_counter() - started)

    cold_counter = TokenCounter(encoding, cache_size=0)
    started = time.perf_counter()
    for role, content in msgs:
        cold_counter.message_tokens(role, content)
    cold = n / (time.perf_counter() - started)

    counter = TokenCounter(encoding)
    started = time.perf_counter()
    for role, content in msgs:
        counter.message_tokens(role, content)
    cached = n / (time.perf_counter() - started)

    return Result(
        name="tokens",
        figures={
            "raw tiktoken.encode msg/s": raw,
            "counter, no cache msg/s": cold,
            "counter, LRU msg/s": cached,
        },
        ratios={"no cache / raw": cold / raw, "LRU / raw": cached / raw},
        # The chat format encodes role and content separately: without the cache it may cost
        # a little more than raw; with repeats the cache must win.
        targets={"LRU / raw": 1.0},
        params={"messages": n, "distinct": n // 4},
    )
