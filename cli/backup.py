"""`suara db backup`, `archive` and `restore`: PostgreSQL's own pg_basebackup, pg_verifybackup, pg_receivewal.

A backup is what `pg_basebackup --format=tar --wal-method=stream` writes to a directory: base.tar.gz
(the data directory), pg_wal.tar.gz (the WAL written while the backup ran, streamed beside it, so the
backup is consistent as of its end without any WAL archive) and backup_manifest (every file with its
SHA-256). `pg_verifybackup` checks it at once. Restore unpacks it with tar into a fresh directory
and checks it again there, against the manifest, WAL included, before anything starts on it.

What a base backup cannot give back is what was committed after it ended. `suara db archive` closes
that window: pg_receivewal streams the WAL, as it is written, into a directory (best on another
disk or host), through a replication slot so the server keeps what it has not yet received. A restore
given that archive replays it after the backup: to its very end, or to a point in time.

pg_basebackup rather than pgBackRest: the embedded server's own build ships it (same version, nothing
to install), it needs only a replication connection (so it works against any server DATABASE_URL
names, remote too), and one self-contained backup per run is what a night needs; pgBackRest's
repository, stanzas and archive_command are worth it for incremental backups and retention, which a
site this size does not need.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from cli.embedded import EmbeddedPostgres, EmbeddedPostgresError, embedded_server, postgres_bin_path
from suara.runtime.settings import Settings

SLOT: str = "suara_archive"
# How long the restored server may take replaying its WAL before it accepts connections.
REPLAY_WAIT_S = 3600
BASE: str = "base.tar.gz"
WAL: str = "pg_wal.tar.gz"
MANIFEST: str = "backup_manifest"


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; the message says what to do."""


def _say(message: str) -> None:
    print(f"suara db: {message}", file=sys.stderr, flush=True)


def _tool(name: str) -> str:
    """A PostgreSQL program: the embedded package's, or (where it is left out, as in the container
    image) the one on PATH."""
    try:
        return str(postgres_bin_path() / name)
    except SystemExit:
        if found := shutil.which(name):
            return found
        raise BackupError(
            f"no {name} here: install PostgreSQL's client programs (apt-get install postgresql-client)"
        ) from None


def tool_major() -> int:
    """The major version of the PostgreSQL programs suara carries (pg_basebackup, the embedded server)."""
    out = subprocess.run([_tool("pg_basebackup"), "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1].split(".")[0])


def _run(cmd: list[str], what: str, hint: str) -> None:
    """Run a PostgreSQL program with its progress on our stderr; BackupError naming `hint` if it fails."""
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr, check=False)
    if proc.returncode != 0:
        raise BackupError(f"{what} failed (exit {proc.returncode}; its messages are above). {hint}")


def _fresh(directory: Path, what: str) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BackupError(f"{directory} is not empty: {what} into a new directory (or move that one away)")


def _check_backup(backup: Path) -> None:
    for name in (MANIFEST, BASE, WAL):
        if not (backup / name).is_file():
            raise BackupError(f"{backup} is not a backup made by `suara db backup`: it has no {name}")


def _major_in(backup: Path) -> int:
    """The PostgreSQL major version that made the backup (its PG_VERSION)."""
    proc = subprocess.run(["tar", "-xzOf", str(backup / BASE), "PG_VERSION"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackupError(f"cannot read PG_VERSION from {backup / BASE}: {proc.stderr.strip()}")
    return int(proc.stdout.strip())


def backup(url: str, target: Path) -> int:
    """Back the whole server at `url` up into the new directory `target`, then verify it; its size in bytes."""
    _fresh(target, "back up")
    existed = target.exists()
    target.mkdir(parents=True, exist_ok=True)
    _say(f"backing up into {target} (pg_basebackup, tar, gzip, WAL streamed) …")
    command = [
        _tool("pg_basebackup"), "--dbname", url, "--pgdata", str(target), "--format=tar", "--compress=gzip",
        "--wal-method=stream", "--checkpoint=fast", "--manifest-checksums=SHA256", "--label=suara db backup",
        "--progress", "--verbose", "--no-password",
    ]  # fmt: skip
    try:
        _run(
            command,
            "pg_basebackup",
            "Check that the server allows a replication connection for this role (the role has REPLICATION, "
            "pg_hba.conf has a `replication` line for it, max_wal_senders >= 2, wal_level = replica), "
            "then run the backup again.",
        )
    except BackupError:
        # It was empty before: only this failed run's files go.
        for leftover in target.iterdir() if existed else [target]:
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        raise
    verify(target)
    return sum(f.stat().st_size for f in target.iterdir())


def archive(url: str, directory: Path) -> None:
    """Become pg_receivewal, streaming the WAL of the server at `url` into `directory` until stopped
    (SIGINT or SIGTERM), each record flushed to disk as it arrives."""
    directory.mkdir(parents=True, exist_ok=True)
    _say(f"creating the replication slot {SLOT!r} if it is missing (the server keeps the WAL it holds) …")
    _run(
        [_tool("pg_receivewal"), "--dbname", url, "--slot", SLOT, "--create-slot", "--if-not-exists", "--no-password"],
        "pg_receivewal --create-slot",
        "Check that the server allows a replication connection for this role (see `suara db backup --help`).",
    )
    _say(f"archiving the WAL into {directory} until stopped (pg_receivewal) …")
    sys.stderr.flush()
    command = [_tool("pg_receivewal"), "--dbname", url, "--directory", str(directory), "--slot", SLOT,
               "--synchronous", "--verbose", "--no-password"]  # fmt: skip
    os.execv(command[0], command)  # it is the process from now on: signals reach it directly


def verify(backup: Path, *, wal: bool = True) -> None:
    """Check a backup directory: every file against the manifest (pg_verifybackup), and (`wal`) that its
    WAL holds every record from the backup's start to its end (pg_waldump, which pg_verifybackup runs
    itself on a plain backup but cannot on tar files)."""
    _check_backup(backup)
    damaged = f"The backup in {backup} is damaged or incomplete: do not restore it; make a new one."
    _say(f"verifying {backup} (pg_verifybackup) …")
    _run([_tool("pg_verifybackup"), "--progress", "--no-parse-wal", str(backup)], "pg_verifybackup", damaged)
    if not wal:
        return
    if _major_in(backup) != tool_major():
        _say("its WAL is not parsed: another PostgreSQL version wrote it (its own pg_waldump can)")
        return
    ranges = json.loads((backup / MANIFEST).read_text())["WAL-Ranges"]
    with tempfile.TemporaryDirectory(prefix="suara-wal-") as wal_dir:
        _run(["tar", "-xzf", str(backup / WAL), "-C", wal_dir], "tar", damaged)
        for r in ranges:
            _say(f"verifying its WAL from {r['Start-LSN']} to {r['End-LSN']} (pg_waldump) …")
            _run(
                [_tool("pg_waldump"), "--quiet", "--path", wal_dir, "--timeline", str(r["Timeline"]),
                 "--start", r["Start-LSN"], "--end", r["End-LSN"]],
                "pg_waldump",
                damaged,
            )  # fmt: skip


def restore_files(backup: Path, pgdata: Path, wal_archive: Path | None = None, target_time: str | None = None) -> None:
    """Unpack the backup into the new directory `pgdata`, check every file there against the manifest,
    then add the WAL of `wal_archive` (`suara db archive`), to be replayed after the backup: to its end,
    or up to `target_time` (a PostgreSQL timestamp; the server stops there and starts a new timeline)."""
    if target_time is not None and wal_archive is None:
        raise BackupError("--target-time needs --wal-archive: a backup alone can only give back its own end")
    if wal_archive is not None and not any(_segments(wal_archive)):
        raise BackupError(f"{wal_archive} holds no WAL segment: is it the directory `suara db archive` writes?")
    _fresh(pgdata, "restore")
    verify(backup, wal=False)  # a damaged backup is named as such before anything is unpacked
    pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    pgdata.chmod(0o700)  # PostgreSQL refuses a data directory others may enter
    _say(f"unpacking {backup} into {pgdata} …")
    _run(["tar", "-xzf", str(backup / BASE), "-C", str(pgdata)], "tar", f"Remove {pgdata} and try again.")
    _run(["tar", "-xzf", str(backup / WAL), "-C", str(pgdata / "pg_wal")], "tar", f"Remove {pgdata} and try again.")
    same = _major_in(backup) == tool_major()
    _say(f"verifying {pgdata} against {backup / MANIFEST} (pg_verifybackup) …")
    _run(
        [_tool("pg_verifybackup"), "--progress", "--manifest-path", str(backup / MANIFEST),
         *([] if same else ["--no-parse-wal"]), str(pgdata)],
        "pg_verifybackup",
        f"What was unpacked into {pgdata} does not match the backup: remove {pgdata}; "
        "if it fails again, the backup itself is damaged: use another one.",
    )  # fmt: skip
    if wal_archive is not None:
        _add_archive(wal_archive, pgdata, target_time)


def _segments(wal_archive: Path) -> list[Path]:
    """The WAL segment files of an archive (the one being written ends in .partial)."""
    if not wal_archive.is_dir():
        return []
    return sorted(
        p for p in wal_archive.iterdir() if len(p.name.removesuffix(".partial")) == 24 and p.name[:24].isalnum()
    )


def _add_archive(wal_archive: Path, pgdata: Path, target_time: str | None) -> None:
    # PostgreSQL replays what it finds in pg_wal after the backup's own WAL (the documented way to
    # add WAL that was never archived). The archive's copy of a segment the backup also has is the
    # same stream and at least as long, so it replaces it; the segment being written is used as it is.
    segments = _segments(wal_archive)
    _check_contiguous(segments, _backup_end_segment(pgdata))
    _say(f"adding {len(segments)} WAL segment(s) from {wal_archive} …")
    for segment in segments:
        shutil.copyfile(segment, pgdata / "pg_wal" / segment.name.removesuffix(".partial"))
    for history in wal_archive.glob("*.history"):
        shutil.copyfile(history, pgdata / "pg_wal" / history.name)
    if target_time is None:
        return  # no recovery.signal: the server replays every record there is, as after a crash
    (pgdata / "recovery.signal").touch()
    with (pgdata / "postgresql.auto.conf").open("a") as fh:
        fh.write(_recovery_conf(target_time))


def _backup_end_segment(pgdata: Path) -> tuple[str, int]:
    """The timeline and number of the WAL segment the restored backup ends in (its last in pg_wal)."""
    names = sorted(p.name for p in (pgdata / "pg_wal").iterdir() if len(p.name) == 24 and p.name.isalnum())
    if not names:
        raise BackupError(f"the backup restored into {pgdata} has no WAL: make a new backup")
    return names[-1][:8], _segment_number(names[-1], (pgdata / "pg_wal" / names[-1]).stat().st_size)


def _segment_number(name: str, segment_bytes: int) -> int:
    # A segment's name is its timeline, then its number as (high, low) in units of 4 GiB / segment size.
    return int(name[8:16], 16) * (0x1_0000_0000 // segment_bytes) + int(name[16:24], 16)


def _check_contiguous(segments: list[Path], backup_end: tuple[str, int]) -> None:
    """The archive must continue the backup without a hole: replay stops at the first segment missing,
    and would quietly leave out everything after it."""
    timeline, end = backup_end
    numbers = sorted(_segment_number(p.name, p.stat().st_size) for p in segments if p.name[:8] == timeline)
    # The backup ends with a switch to the next segment, so an archive started after it begins there.
    if not numbers or numbers[0] > end + 1:
        raise BackupError(
            "the WAL archive starts after this backup ended (the WAL in between is in neither): restore it with "
            "a backup taken after `suara db archive` started, or without --wal-archive"
        )
    present = set(numbers)
    holes = [n for n in range(numbers[0], numbers[-1] + 1) if n not in present]
    if holes:
        raise BackupError(
            f"the WAL archive has {len(holes)} segment(s) missing: replay would stop at the first. Restore "
            "without --wal-archive, or copy the missing segments back into the archive first"
        )


def _recovery_conf(target_time: str) -> str:
    """Appended to postgresql.auto.conf for a point-in-time restore; taken out again once it is done."""
    return _RECOVERY_CONF.format(target_time=target_time.replace("'", "''"))


_RECOVERY_CONF = (
    "# suara db restore --target-time: the WAL is in pg_wal already, nothing to fetch\n"
    "restore_command = 'false'\n"
    "hot_standby = off  # no connection before it is promoted: suara's roles are set up after\n"
    "recovery_target_time = '{target_time}'\n"
    "recovery_target_action = 'promote'\n"
)


def restore_embedded(
    backup: Path, data_dir: Path, wal_archive: Path | None = None, target_time: str | None = None
) -> EmbeddedPostgres:
    """Restore into DATA_DIR/pgdata for suara's embedded server, start it once (recovery to the end of
    the backup, and new passwords for every role, in DATA_DIR/pgdata.pass) and stop it again."""
    _check_backup(backup)
    made_by, ours = _major_in(backup), tool_major()
    if made_by != ours:
        raise BackupError(
            f"{backup} comes from PostgreSQL {made_by}; the embedded server is PostgreSQL {ours}. Restore it "
            f"with `suara db restore --pgdata DIR` and start it with PostgreSQL {made_by}'s own programs."
        )
    server = embedded_server(replace(Settings(), data_dir=data_dir))
    restore_files(backup, server.pgdata, wal_archive, target_time)
    server.adopt_restored()
    until = "the end of the backup" if wal_archive is None else target_time or "the end of the archived WAL"
    _say(f"starting the restored server once: recovery to {until}, new passwords …")
    try:
        server.start(wait_s=REPLAY_WAIT_S)
    except EmbeddedPostgresError as error:
        raise BackupError(
            f"the restored server did not start: {error}\nWith --target-time, the time must be after the "
            f"backup's end and within the archive. Remove {server.pgdata} and restore again."
        ) from None
    server.stop()
    if target_time is not None:  # done: a later start must not read them (as a standby, say)
        auto = server.pgdata / "postgresql.auto.conf"
        auto.write_text(auto.read_text().replace(_recovery_conf(target_time), ""))
    return server
