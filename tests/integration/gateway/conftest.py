"""Gateway integration fixtures: a flow of real processes (catalog, notifier, gateway) on the real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.flow import Flow
from tests.support.servers import AMQP_URL, DATABASE_URL


@pytest.fixture
async def flow(tmp_path: Path, unique: str) -> AsyncIterator[Flow]:
    flow = Flow(tmp_path, AMQP_URL, DATABASE_URL, site=f"s{unique}")
    await flow.prepare()
    yield flow
    await flow.close()
