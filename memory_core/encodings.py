"""Loads the supported tiktoken encodings from a local folder, verified, with no network."""

from __future__ import annotations

import base64
import hashlib
import threading
from pathlib import Path

import tiktoken
from tiktoken_ext import openai_public

from memory_core.errors import EncodingUnavailableError
from memory_core.tokens import SUPPORTED_ENCODINGS, ChatFormat, TokenCounter

# tiktoken's official SHA-256 of each file (tiktoken_ext/openai_public.py).
EXPECTED_SHA256: dict[str, str] = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
}

_constructor_lock = threading.Lock()


def _parse_ranks(data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


class EncodingRegistry:
    """The verified encodings in ``directory`` (files ``<name>.tiktoken``), loaded once each."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._encodings: dict[str, tiktoken.Encoding] = {}
        self._counters: dict[tuple[str, ChatFormat], TokenCounter] = {}
        self._lock = threading.Lock()

    def encoding(self, name: str) -> tiktoken.Encoding:
        """The encoding ``name``; raises ``EncodingUnavailableError`` if missing or corrupt."""
        with self._lock:
            enc = self._encodings.get(name)
            if enc is None:
                enc = self._encodings[name] = self._load(name)
            return enc

    def counter(self, name: str, *, model: str | None = None) -> TokenCounter:
        """A shared cached ``TokenCounter`` for encoding ``name`` (and the model's chat format)."""
        fmt = ChatFormat.for_model(model)
        enc = self.encoding(name)
        with self._lock:
            counter = self._counters.get((name, fmt))
            if counter is None:
                counter = self._counters[(name, fmt)] = TokenCounter(enc, chat_format=fmt)
            return counter

    def _load(self, name: str) -> tiktoken.Encoding:
        if name not in SUPPORTED_ENCODINGS:
            raise EncodingUnavailableError(
                name, "not supported; use one of " + ", ".join(SUPPORTED_ENCODINGS)
            )
        path = self.directory / f"{name}.tiktoken"
        try:
            data = path.read_bytes()
        except OSError:
            raise EncodingUnavailableError(
                name, f"{path} is missing; run `memstream encodings install`"
            ) from None
        if hashlib.sha256(data).hexdigest() != EXPECTED_SHA256[name]:
            raise EncodingUnavailableError(
                name, f"{path} does not match tiktoken's official hash; reinstall it"
            )
        ranks = _parse_ranks(data)
        # The pattern and special tokens come from tiktoken's own constructor, which would
        # otherwise download the ranks: swap its loader for the verified local file.
        with _constructor_lock:
            original = openai_public.load_tiktoken_bpe
            openai_public.load_tiktoken_bpe = lambda *_args, **_kw: ranks
            try:
                spec = openai_public.ENCODING_CONSTRUCTORS[name]()
            finally:
                openai_public.load_tiktoken_bpe = original
        encoding = tiktoken.Encoding(**spec)
        # The Rust core keeps its own copy of the ranks; the Python dict Encoding keeps
        # besides serves only pickling, which memstream never does. Dropped, it frees 27 MiB
        # of o200k_base's 72 in every process (docs/decisions/0011).
        if isinstance(getattr(encoding, "_mergeable_ranks", None), dict):
            encoding._mergeable_ranks = {}
        return encoding
