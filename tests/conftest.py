"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest

from consumers.settings import Settings
from memory_core import EncodingRegistry, TokenCounter

pytest_plugins = ["tests.services"]


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Process settings as the tests' environment gives them."""
    return Settings()


@pytest.fixture(scope="session")
def encodings(settings: Settings) -> EncodingRegistry:
    """The verified tiktoken encodings installed by the README's set-up command."""
    return EncodingRegistry(settings.resolved_encodings_dir)


@pytest.fixture(scope="session")
def counter(encodings: EncodingRegistry) -> TokenCounter:
    """An o200k_base chat-format counter."""
    return encodings.counter("o200k_base")
