#!/usr/bin/env python3
"""Prometheus file_sd target files from `suara up`'s DATA_DIR/up.json.

    python3 deploy/prometheus/file_sd.py DATA_DIR/up.json deploy/prometheus/targets [--follow]

writes OUT/suara-<service>.json (tally, aggregate, publish) with every process's metrics address, in
the form prometheus.yml's file_sd_configs read. Each file is replaced whole (written beside and
renamed), so Prometheus never reads half of one. `--follow` rewrites them whenever up.json changes
(`suara up` rewrites it when a child restarts on another port). Standard library only: it runs on a
monitoring host without suara installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def target_groups(up: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Job name -> file_sd target groups, one group per process (scheme and path can differ)."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for service, processes in sorted(up.get("services", {}).items()):
        groups = jobs.setdefault(f"suara-{service}", [])
        for process in processes:
            url = process.get("metrics")
            if not url:
                continue  # a process started without metrics: nothing to scrape
            parts = urlsplit(url)
            groups.append(
                {
                    "targets": [parts.netloc],
                    "labels": {"__scheme__": parts.scheme or "http", "__metrics_path__": parts.path or "/metrics"},
                }
            )
    return jobs


def write(up: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for job, groups in target_groups(up).items():
        path = out_dir / f"{job}.json"
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(json.dumps(groups, indent=2) + "\n")
        temp.replace(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("up_json", type=Path, help="DATA_DIR/up.json of `suara up`")
    parser.add_argument("out_dir", type=Path, help="where prometheus.yml's file_sd_configs look (its targets/)")
    parser.add_argument("--follow", action="store_true", help="rewrite the files whenever up.json changes")
    args = parser.parse_args(argv)
    # The content, not the mtime, tells a change: a rewrite within one timestamp tick is not missed.
    last: bytes | None = None
    reported = ""
    while True:
        try:
            raw = args.up_json.read_bytes()
            if raw != last:
                for path in write(json.loads(raw), args.out_dir):
                    print(f"wrote {path}", file=sys.stderr)
                last, reported = raw, ""
        except (OSError, ValueError) as exc:  # absent (suara stopped) or unreadable: the last files stay
            if not args.follow:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            if str(exc) != reported:
                print(f"note: {exc}: the target files stay as they are", file=sys.stderr, flush=True)
                reported = str(exc)
        if not args.follow:
            return 0
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())
