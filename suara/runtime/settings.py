"""Settings, declared once with their environment variable, default and help.

Every process reads the same table: the CLI prints it in `--help`, the README
lists it (a test keeps the two in step), and nothing else reads os.environ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def _setting(env: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


@dataclass(frozen=True)
class Settings:
    database_url: str = _setting(
        "DATABASE_URL", "", "PostgreSQL to use; empty: an embedded server kept in SUARA_DATA_DIR/pgdata"
    )
    data_dir: Path = _setting(
        "SUARA_DATA_DIR", Path(".suara"), "local state: the embedded database, keys, the admin credential"
    )
    tally_host: str = _setting("SUARA_TALLY_HOST", "127.0.0.1", "address the tally gRPC server binds")
    tally_port: int = _setting("SUARA_TALLY_PORT", 50051, "port of the tally gRPC server (0: any free port)")
    aggregate_host: str = _setting(
        "SUARA_AGGREGATE_HOST", "127.0.0.1", "address the aggregate gRPC server (`suara aggregate serve`) binds"
    )
    aggregate_port: int = _setting(
        "SUARA_AGGREGATE_PORT", 50052, "port of the aggregate gRPC server (0: any free port)"
    )
    tally_shared_port: int = _setting(
        "SUARA_TALLY_SHARED_PORT", 0, "1: several tally processes may serve one port (SO_REUSEPORT), one core each"
    )
    max_in_flight: int = _setting(
        "SUARA_TALLY_MAX_IN_FLIGHT", 4096, "forms admitted at once; beyond it RESOURCE_EXHAUSTED"
    )
    commit_batch_max: int = _setting("SUARA_TALLY_COMMIT_BATCH", 500, "most forms one group-commit transaction takes")
    commit_wait_s: float = _setting(
        "SUARA_TALLY_COMMIT_WAIT_S", 1.0, "deadline of a call's database work; past it UNAVAILABLE (safe to resend)"
    )
    retry_after_ms: int = _setting(
        "SUARA_TALLY_RETRY_AFTER_MS", 250, "retry-after hint sent with RESOURCE_EXHAUSTED and UNAVAILABLE"
    )
    photo_max_bytes: int = _setting("SUARA_PHOTO_MAX_BYTES", 2 * 1024 * 1024, "largest form photo accepted")
    verify_threads: int = _setting(
        "SUARA_VERIFY_THREADS",
        2,
        "threads verifying a batch's Ed25519 signatures beside the event loop (one form: inline)",
    )
    event_loop: str = _setting(
        "SUARA_EVENT_LOOP", "uvloop", "event loop of every suara process: uvloop (less CPU per call) or asyncio"
    )
    db_pool_size: int = _setting("SUARA_DB_POOL_SIZE", 8, "PostgreSQL connections per service process")
    shutdown_grace_s: float = _setting(
        "SUARA_SHUTDOWN_GRACE_S", 10.0, "on SIGTERM, how long in-flight calls may take to finish"
    )
    aggregate_address: str = _setting(
        "SUARA_AGGREGATE_ADDRESS", "127.0.0.1:50052", "host:port of the aggregate gRPC server the relay delivers to"
    )
    relay_credential: str = _setting(
        "SUARA_RELAY_CREDENTIAL",
        "",
        "the relay's writer credential (`suara service issue`); empty: SUARA_DATA_DIR/relay.key.json",
    )
    relay_batch: int = _setting("SUARA_RELAY_BATCH", 1000, "most outbox rows the relay sends in one ApplyUpdates call")
    site_dir: Path = _setting(
        "SUARA_SITE_DIR", Path("site"), "where publish writes the static site (and serves it from)"
    )
    publish_to: str = _setting(
        "SUARA_PUBLISH_TO", "", "publish's sink: empty for SUARA_SITE_DIR, or s3://bucket/prefix (S3-compatible)"
    )
    s3_endpoint_url: str = _setting(
        "SUARA_S3_ENDPOINT_URL", "", "endpoint of an S3-compatible server (MinIO, Ceph…); empty: AWS"
    )
    publish_host: str = _setting("SUARA_PUBLISH_HOST", "127.0.0.1", "address publish's gRPC status server binds")
    publish_port: int = _setting("SUARA_PUBLISH_PORT", 50053, "port of publish's gRPC status server (0: any free)")
    publish_interval_s: float = _setting(
        "SUARA_PUBLISH_INTERVAL_S", 1.0, "how often publish looks for aggregate's changes (a cycle runs only on change)"
    )
    publish_credential: str = _setting(
        "SUARA_PUBLISH_CREDENTIAL",
        "",
        "publish's reader credential for aggregate (`suara service issue`); empty: SUARA_DATA_DIR/publish.key.json",
    )
    tally_address: str = _setting(
        "SUARA_TALLY_ADDRESS", "127.0.0.1:50051", "host:port of tally, where publish reads the chain head and photos"
    )
    http_port: int = _setting("SUARA_HTTP_PORT", 8080, "port of `suara publish serve` (the public site, locally)")
    log_level: str = _setting("SUARA_LOG_LEVEL", "info", "debug, info, warning or error")
    log_format: str = _setting("SUARA_LOG_FORMAT", "auto", "json, console, or auto (json unless a terminal)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            kind: Any = type(f.default)  # every setting has a default; its type parses the variable
            try:
                values[f.name] = kind(raw)
            except ValueError as exc:
                raise SystemExit(f"{f.metadata['env']}={raw!r} is not a valid {kind.__name__}: {exc}") from exc
        values.update(overrides)
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(environment variable, default, help) for every setting."""
        return [(f.metadata["env"], str(f.default), f.metadata["help"]) for f in fields(cls)]


def settings_help() -> str:
    rows = Settings.describe()
    width = max(len(env) for env, _, _ in rows)
    lines = ["environment:"]
    for env, default, help in rows:
        shown = f" (default: {default})" if default else ""
        lines.append(f"  {env.ljust(width)}  {help}{shown}")
    return "\n".join(lines)
