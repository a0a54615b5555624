"""Fixtures for pipeline tests: a small memory resource and a running pipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from consumers.bootstrap import App, build_app
from consumers.runner import Runner
from consumers.settings import Settings

MEMORIES = """
memories:
  - id: chat
    key: "agent:{agent_id}:user:{user_id}"
    model: gpt-4o
    max_tokens: 400
    token_allocation: {system: 0.125, short_term: 0.625, long_term: 0.25}
    flushing: {threshold: 0.8, summarize_oldest_percent: 0.5, summary_recent_messages: 2,
               summary_tokens: 60}
    locking: {ttl: 5s, acquire_timeout: 5s}
    privacy:
      redact_patterns: ['\\b[\\w.+-]+@[\\w-]+\\.[\\w.]+\\b']
      non_persistable_roles: []
"""


@pytest.fixture
def pipeline_settings(test_settings: Settings, tmp_path: Path) -> Settings:
    """Isolated settings whose memories file holds the small ``chat`` memory."""
    path = tmp_path / "memories.yaml"
    path.write_text(MEMORIES)
    return test_settings.model_copy(update={"memories_file": path})


@pytest.fixture
async def app(pipeline_settings: Settings) -> AsyncIterator[App]:
    """The composition root for this test's settings."""
    async with build_app(pipeline_settings) as built:
        yield built


@pytest.fixture
async def pipeline(app: App, temporal_client: Client) -> AsyncIterator[Runner]:
    """Every role running: apply consumer, dispatcher, Temporal worker."""
    async with Runner(app, temporal=temporal_client) as runner:
        yield runner
