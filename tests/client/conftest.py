"""The client tests' fixtures: the in-process tally behind a network that can be cut, and recorded waits."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.client.doubles import Network, Waits
from tests.support.tally import Tally


@pytest.fixture
async def network(tally: Tally) -> AsyncIterator[Network]:
    net = await Network(tally.app.port).start()
    yield net
    await net.close()


@pytest.fixture
def waits() -> Waits:
    return Waits()
