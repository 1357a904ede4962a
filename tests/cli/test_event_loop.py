"""SUARA_EVENT_LOOP picks every process's event loop; a wrong name stops the command with what to set."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from cli import loop_factory
from suara.runtime.settings import Settings


@pytest.mark.parametrize(("name", "kind"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.SelectorEventLoop)])
def test_each_named_loop_runs_a_coroutine(name: str, kind: type) -> None:
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        assert isinstance(runner.get_loop(), kind)
        assert runner.run(asyncio.sleep(0, result=42)) == 42


def test_uvloop_is_the_default() -> None:
    assert Settings.from_env({}).event_loop == "uvloop"


def test_an_unknown_loop_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match="SUARA_EVENT_LOOP must be uvloop or asyncio, not 'trio'"):
        loop_factory("trio")
