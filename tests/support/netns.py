"""Network namespaces for tests that need a network of their own (a firewall's rules, several source
addresses): made with `ip netns` under a name of their own, removed after; root only.

Nothing inside reaches the host's network, nor the host's rules it: a process runs inside through
`ip netns exec`, the test's own sockets are made inside by a thread that entered the namespace (a
socket stays in the namespace it was made in), and the test database is reached through a Unix socket
(which no network namespace separates) relayed to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

T = TypeVar("T")

CLONE_NEWNET = 0x40000000  # <sched.h>: setns(2) into a network namespace


def unavailable(*tools: str) -> str | None:
    """Why namespace tests cannot run here (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return "network namespaces and their firewall need root"
    missing = [tool for tool in ("ip", *tools) if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing: Debian's iproute2 and nftables (`make system-deps`, as root)"
    return None


def _enter(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


@dataclass
class Namespace:
    name: str
    _inside: ThreadPoolExecutor  # its one thread has entered the namespace (and only it)

    def command(self, *args: str) -> list[str]:
        """`args` as a command line that runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run(self.command(*args), input=stdin, text=True, check=True, capture_output=True, timeout=30)

    async def call(self, fn: Callable[[], T]) -> T:
        """`fn()` on the thread inside the namespace: the sockets it makes are the namespace's."""
        return await asyncio.get_running_loop().run_in_executor(self._inside, fn)


@contextlib.contextmanager
def namespace() -> Iterator[Namespace]:
    """A new network namespace with its loopback up (all of 127.0.0.0/8 on it), deleted afterwards."""
    name = f"suara-test-{uuid.uuid4().hex[:10]}"
    made = subprocess.run(["ip", "netns", "add", name], check=False, capture_output=True, text=True, timeout=30)
    if made.returncode != 0:  # root without the capability (a restricted container): nothing to test here
        pytest.skip(f"`ip netns add` failed: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
        inside = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=_enter, initargs=(name,))
        try:
            yield Namespace(name, inside)
        finally:
            inside.shutdown()
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True, timeout=30)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def database_inside(url: str, directory: Path) -> AsyncIterator[str]:
    """`url` (a PostgreSQL URL) as a process inside a namespace reaches it: a Unix socket in `directory`
    (short: a socket path has ~107 bytes) relayed to the server, TCP or Unix socket."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    host = query.pop("host", None) or parts.hostname or "127.0.0.1"
    port = int(query.pop("port", None) or parts.port or 5432)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if host.startswith("/"):
            up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    server = await asyncio.start_unix_server(relay, path=str(directory / f".s.PGSQL.{port}"))
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@" if credentials else ""
    try:
        yield urlunsplit((parts.scheme, netloc, parts.path, urlencode({**query, "host": directory, "port": port}), ""))
    finally:
        server.close()
