"""`suara up`'s children's logs stay bounded: rotated by size, a fixed number kept; or on stdout."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from cli.supervisor import RotatingLog, Supervisor
from tests.cli.test_up import FREE_PORTS, suara_up
from tests.support.processes import run_suara, suara_env


def _parts(path: Path, backups: int) -> list[Path]:
    """The log's files, oldest first."""
    older = [path.with_name(f"{path.name}.{n}") for n in range(backups, 0, -1)]
    return [p for p in [*older, path] if p.exists()]


@pytest.mark.parametrize("backups", [0, 1, 3])
def test_rotating_log_never_exceeds_its_bound_and_keeps_the_newest_lines(tmp_path: Path, backups: int) -> None:
    path = tmp_path / "tally.log"
    max_bytes = 4096
    written = b"".join(b'{"event": "line", "n": %d, "pad": "%s"}\n' % (n, b"x" * (n % 97)) for n in range(2000))
    log = RotatingLog(path, max_bytes, backups)
    # In uneven chunks, as a pipe hands them over: a chunk may end in the middle of a line.
    for start in range(0, len(written), 777):
        log.write(written[start : start + 777])
    log.close()

    parts = _parts(path, backups)
    assert len(parts) == backups + 1, [p.name for p in parts]
    assert not path.with_name(f"{path.name}.{backups + 1}").exists(), "more older parts than kept"
    assert all(p.stat().st_size <= max_bytes for p in parts), [p.stat().st_size for p in parts]
    # Every rotated part ends at a line's end (no line is split across files).
    assert all(p.read_bytes().endswith(b"\n") for p in parts[:-1])
    # The oldest parts are dropped, never the newest: what is kept is exactly the end of what was written.
    kept = b"".join(p.read_bytes() for p in parts)
    assert written.endswith(kept)
    # And it is all there was but for whole files dropped: the kept parts are not shortened.
    assert len(kept) > backups * max_bytes // 2


def test_a_line_longer_than_the_limit_is_cut_rather_than_growing_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    log = RotatingLog(path, 4096, 2)
    log.write(b"y" * 10_000 + b"\n")
    log.close()
    parts = _parts(path, 2)
    assert all(p.stat().st_size <= 4096 for p in parts)
    assert b"".join(p.read_bytes() for p in parts) == (b"y" * 10_000 + b"\n")[-(sum(p.stat().st_size for p in parts)) :]


def test_an_existing_log_over_the_size_is_rotated_at_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"old\n" * 5000)  # left by an earlier run with a larger limit
    log = RotatingLog(path, 4096, 1)
    log.write(b"new\n")
    log.close()
    assert path.read_bytes() == b"new\n"
    assert path.with_name("x.log.1").read_bytes() == b"old\n" * 5000


async def test_supervisor_rotates_a_childs_output(tmp_path: Path) -> None:
    """A real child (`suara --help`, several KB) through the supervisor's pipe: its log rotates."""
    help_text = (await run_suara("--help", env={}, cwd=tmp_path)).stdout.encode()
    max_bytes, backups = 4096, 2
    assert len(help_text) > max_bytes  # each run alone overflows a file
    supervisor = Supervisor(tmp_path / "logs", tmp_path / "up.json", log_max_bytes=max_bytes, log_backups=backups)
    runs = 4
    for _ in range(runs):
        assert await supervisor.run_once("chatty", ["--help"], env={}) == 0
    await supervisor.stop()
    path = supervisor.log_file("chatty")
    parts = _parts(path, backups)
    assert len(parts) == backups + 1
    assert all(p.stat().st_size <= max_bytes for p in parts), [p.stat().st_size for p in parts]
    kept = b"".join(p.read_bytes() for p in parts)
    assert (help_text * runs).endswith(kept), "the newest output is what is kept, whole and in order"
    assert sorted(p.name for p in path.parent.iterdir()) == ["chatty.log", "chatty.log.1", "chatty.log.2"]


async def test_supervisor_with_log_to_stdout_writes_no_file(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    supervisor = Supervisor(tmp_path / "logs", tmp_path / "up.json", log_to_stdout=True)
    assert await supervisor.run_once("chatty", ["--help"], env={}) == 0
    await supervisor.stop()
    assert "SUARA_LOG_MAX_BYTES" in capfd.readouterr().out
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())


async def test_up_with_log_to_stdout_sends_the_services_logs_there_and_writes_no_log_file(
    db_url: str, tmp_path: Path
) -> None:
    env = suara_env(DATABASE_URL=db_url, **FREE_PORTS)
    async with suara_up(env, tmp_path, "--log-to-stdout") as up:
        assert up.stdout[-1] == up.ready.group(0)
        assert await up.stop(signal.SIGTERM) == 0, up.log.text()
        assert up.proc.stdout is not None
        rest = (await up.proc.stdout.read()).decode()
    records = [json.loads(line) for line in [*up.stdout, *rest.splitlines()] if line.startswith("{")]
    services = {r.get("service") for r in records}
    assert {"suara-tally", "suara-aggregate"} <= services, services  # the children's own JSON lines
    logs = tmp_path / "state" / "logs"
    assert not logs.exists() or not any(logs.iterdir()), list(logs.iterdir())
