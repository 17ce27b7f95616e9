"""Fixtures of the fake upstream's own tests: the fake on a real port, and the openai SDK on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from chatproxy.testing import FakeUpstream


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def sdk(fake: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fake.url, api_key="x", max_retries=0) as client:
        yield client
