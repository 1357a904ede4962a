"""`suara db backup` and `suara db restore`: PostgreSQL's own pg_basebackup and pg_verifybackup.

A backup is what `pg_basebackup --format=tar --wal-method=stream` writes to a directory: base.tar.gz
(the data directory), pg_wal.tar.gz (the WAL written while the backup ran, streamed beside it, so the
backup is consistent as of its end without any WAL archive) and backup_manifest (every file with its
SHA-256). `pg_verifybackup` checks it at once. Restore unpacks it with tar into a fresh directory
and checks it again there, against the manifest, WAL included, before anything starts on it.

pg_basebackup rather than pgBackRest: the embedded server's own build ships it (same version, nothing
to install), it needs only a replication connection (so it works against any server DATABASE_URL
names, remote too), and one self-contained backup per run is what a night needs; pgBackRest's
repository, stanzas and archive_command are worth it for incremental backups and retention, which a
site this size does not need.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from cli.embedded import BIN_DIR, EmbeddedPostgres, embedded_server
from suara.runtime.settings import Settings

BASE: str = "base.tar.gz"
WAL: str = "pg_wal.tar.gz"
MANIFEST: str = "backup_manifest"


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; the message says what to do."""


def _say(message: str) -> None:
    print(f"suara db: {message}", file=sys.stderr, flush=True)


def _tool(name: str) -> str:
    return str(BIN_DIR / name)


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


def restore_files(backup: Path, pgdata: Path) -> None:
    """Unpack the backup into the new directory `pgdata` and check every file there against the manifest."""
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


def restore_embedded(backup: Path, data_dir: Path) -> EmbeddedPostgres:
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
    restore_files(backup, server.pgdata)
    server.adopt_restored()
    _say("starting the restored server once: recovery to the end of the backup, new passwords …")
    server.start()
    server.stop()
    return server
