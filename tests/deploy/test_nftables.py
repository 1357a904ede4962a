"""deploy/nftables/tally.nft, applied for real: connections per source address to tally's public port.

gRPC has no per-address connection limit, so the deployment's firewall holds it. The rule set is loaded
into a network namespace of the test's own (its own netfilter: nothing reaches the host's), a real
`suara tally serve` listens inside it, and connections come from several loopback addresses there. The
oracle is the kernel's answer to each connect, and the database's row for a real Submit.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import tempfile
from pathlib import Path

import asyncpg
import pytest

from services.tally.credentials import enroll_device
from suara.election.form import form_to_dict
from suara.election.signing import DeviceKey
from tests.support import netns
from tests.support.factories import TEST_ELECTION, consistent_form
from tests.support.pki import suite_pki
from tests.support.processes import COMMAND_TIMEOUT_S, SUARA, Child, LogTail, suara_env
from tests.support.tally import PHOTO_STORE
from tests.support.waiting import STARTUP_S, poll_until

RULES = Path(__file__).resolve().parents[2] / "deploy" / "nftables" / "tally.nft"
PORT = 50051  # the rule set's own port (tally's default): the namespace is new, so nothing else holds it
LIMIT = 3  # in place of the shipped 1000, so the test opens a handful of connections

pytestmark = pytest.mark.skipif(bool(netns.unavailable("nft")), reason=netns.unavailable("nft") or "")


def rules(limit: int) -> str:
    """The shipped rule set with another number of connections per address (nft takes no variable there)."""
    text, count = re.subn(r"\bct count over \d+\b", f"ct count over {limit}", RULES.read_text())
    assert count == 2, "tally.nft should limit IPv4 addresses and IPv6 /64s, one rule each"
    assert re.search(rf"^define TALLY_PORT = {PORT}$", text, re.MULTILINE), "tally.nft guards another port"
    return text


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(suite_pki().ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    return context


def tls_connection(source: str, target: str) -> ssl.SSLSocket:
    """A TCP connection from `source` to tally's port at `target`, through its TLS handshake (a device's
    channel before its first call). Run inside the namespace."""
    raw = socket.create_connection((target, PORT), timeout=10, source_address=(source, 0))
    try:
        return _tls_context().wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


async def connects(ns: netns.Namespace, source: str, target: str = "127.0.0.1") -> ssl.SSLSocket | None:
    """A TLS connection, or None when the kernel refused it (a reset: ECONNREFUSED)."""
    try:
        return await ns.call(lambda: tls_connection(source, target))
    except ConnectionRefusedError:
        return None


async def submit_inside(ns: netns.Namespace, env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str]:
    """`suara ARGS…` run inside the namespace: its exit status and what it printed."""
    proc = await asyncio.create_subprocess_exec(
        *ns.command(str(SUARA), *args),
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_one_address_past_its_connections_is_refused_while_others_connect_and_submit(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    tps = await db.fetchval("SELECT code FROM registry.tps ORDER BY code LIMIT 1")
    rows = await db.fetch("SELECT id FROM registry.choice WHERE contest = 'ppwp' ORDER BY nomor_urut")
    choices = [r["id"] for r in rows]
    key = DeviceKey.generate(tps, TEST_ELECTION)
    await enroll_device(db, key.device_id, tps, key.public_key, "test")
    key.save(tmp_path / "device.key.json")
    (tmp_path / "form.json").write_text(json.dumps(form_to_dict(consistent_form(tps, "ppwp", choices))))

    held: list[ssl.SSLSocket] = []
    with netns.namespace() as ns, tempfile.TemporaryDirectory(prefix="suara-ns-") as relay_dir:
        # IPv6 addresses on the namespace's own loopback (a documentation prefix: nowhere else): two in
        # one /64, one in another.
        for address in ("2001:db8::1", "2001:db8::2", "2001:db8:0:1::1"):
            ns.run("ip", "addr", "add", f"{address}/128", "dev", "lo", "nodad")
        async with netns.database_inside(db_url, Path(relay_dir)) as inside_url:
            env = suara_env(
                DATABASE_URL=inside_url,
                SUARA_DATA_DIR=tmp_path / "state",
                SUARA_PHOTO_STORE=PHOTO_STORE,
                SUARA_LOG_FORMAT="json",
                SUARA_METRICS="off",
            )
            command = ns.command(str(SUARA), "tally", "serve", "--host", "[::]", "--port", str(PORT))
            proc = await asyncio.create_subprocess_exec(
                *command, env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            assert proc.stderr is not None
            tally = Child("suara tally serve (in the namespace)", proc, LogTail(proc.stderr))
            try:
                await tally.log.wait_for_event("tally_serving", STARTUP_S)

                # Without the rules, tally itself takes any number of connections from one address.
                unruled = [await connects(ns, "127.0.0.2") for _ in range(LIMIT + 1)]
                assert all(unruled), "tally refused a connection before any firewall rule was loaded"
                for connection in unruled:
                    assert connection is not None
                    connection.close()

                ns.run("nft", "-f", "-", stdin=rules(LIMIT))
                ns.run("nft", "-f", "-", stdin=rules(LIMIT))  # loading it again replaces it

                for _ in range(LIMIT):
                    connection = await connects(ns, "127.0.0.2")
                    assert connection is not None, f"127.0.0.2 refused with {len(held)} connections open"
                    held.append(connection)
                assert await connects(ns, "127.0.0.2") is None, f"127.0.0.2 opened connection {LIMIT + 1}"

                # Another address still connects, and a device there submits for real, while 127.0.0.2 is full.
                other = await connects(ns, "127.0.0.3")
                assert other is not None, "127.0.0.3 was refused: the limit is not per address"
                other.close()
                status, out = await submit_inside(
                    ns, env, tmp_path, "submit", "--key", "device.key.json", "--target", f"127.0.0.1:{PORT}",
                    "--outbox", "outbox.sqlite3", "form.json",
                )  # fmt: skip
                assert status == 0, out
                stored = await db.fetchval(
                    "SELECT count(*) FROM tally.submission WHERE tps = $1 AND device_id = $2", tps, key.device_id
                )
                assert stored == 1, out

                # The limit is on connections open, not made: when one closes, the address connects again.
                held.pop().close()
                again: list[ssl.SSLSocket] = []

                async def reconnected() -> bool:
                    connection = await connects(ns, "127.0.0.2")
                    if connection is not None:
                        again.append(connection)
                    return connection is not None

                await poll_until(reconnected, "127.0.0.2 connecting again after closing one", check=tally.assert_alive)
                held.extend(again)

                # IPv6: one /64 is one address; another /64 is another.
                for _ in range(LIMIT):
                    connection = await connects(ns, "2001:db8::1", "2001:db8::1")
                    assert connection is not None, f"2001:db8::1 refused with {len(held)} connections open"
                    held.append(connection)
                assert await connects(ns, "2001:db8::2", "2001:db8::1") is None, "a /64 opened past its limit"
                other = await connects(ns, "2001:db8:0:1::1", "2001:db8::1")
                assert other is not None, "another /64 was refused"
                other.close()
                tally.assert_alive()
            finally:
                for connection in held:
                    connection.close()
                await tally.kill()
