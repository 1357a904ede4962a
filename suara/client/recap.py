"""A recap official's side of rekapitulasi berjenjang: sign the D.Hasil and send it to aggregate.

The official works from files on their own machine, so the plenary never waits for a server: the
snapshot of the area `suara recap fetch` saved, the numbers read out (the paper), and the outbox. A
signed recap goes into the outbox (the device SDK's, suara.client.outbox, of kind "recap") before
any attempt to send it, and `RecapClient` sends it with the SDK's flush, backoff and rules of what
is final. aggregate keys a recap (area, contest, version) as the outbox does, so a resend is
DUPLICATE with the same recap id and a lost reply costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from suara.client.aggregate_stub import aggregate_stub
from suara.client.outbox import CONFLICT_CODE, Entry, Kind, Put, Receipt
from suara.client.sdk import Attempt, Client
from suara.election.recap_sheet import Counts, Snapshot, from_totals, to_totals
from suara.election.signing import OfficialKey
from suara.v1 import aggregate_pb2


class RecapError(ValueError):
    """The recap cannot be signed as asked (another area than the key's, no numbers for some unit…)."""


def outcome_name(outcome: aggregate_pb2.RecapOutcome.ValueType) -> str:
    return aggregate_pb2.RecapOutcome.Name(outcome).removeprefix("RECAP_OUTCOME_")


def recap_of(entry: Entry) -> aggregate_pb2.RecapForm:
    return aggregate_pb2.RecapForm.FromString(entry.payload)


def sign_recap(
    key: OfficialKey, contest: str, version: int, totals: aggregate_pb2.Totals, signed_at_ms: int
) -> aggregate_pb2.SignedRecap:
    """Serialize once (deterministically) and sign those bytes with the official's key."""
    recap = aggregate_pb2.RecapForm(
        area=key.area, contest=contest, version=version, totals=totals, election_id=key.election_id
    )
    recap.signed_at.FromMilliseconds(signed_at_ms)
    payload = recap.SerializeToString(deterministic=True)
    return aggregate_pb2.SignedRecap(payload=payload, signature=key.sign(payload), official_id=key.official_id)


class RecapClient(Client):
    """Signs recaps into an outbox of kind "recap" and sends them to aggregate's public listener.

    `target` is aggregate's public address (officials need no client certificate: the signature is
    their credential); `tls` verifies aggregate against the deployment's CA.
    """

    kind: Kind = "recap"
    server = "aggregate"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_max = 1  # SubmitRecap takes one recap a call; an official has a handful

    async def store_recap(
        self, key: OfficialKey, contest: str, counts: Mapping[str, int], snapshot: Snapshot
    ) -> tuple[Entry, Put]:
        """Sign the recap of `counts` and commit it to the outbox; nothing goes on the network.

        The same numbers as the newest recap of (area, contest) already in the outbox are that recap
        again (a second `suara recap sign` is a resend, not a new version); other numbers are a
        correction, signed with the next version above every one the outbox or the site knows.
        """
        if snapshot.area != key.area:
            raise RecapError(
                f"this key is {key.official_id}'s for area {key.area}, but the sheet is of area {snapshot.area}"
            )
        totals = to_totals(counts, snapshot.choices)
        entries = await self.outbox.entries()
        mine = [e for e in entries if e.tps == key.area and e.contest == contest and e.state != "replaced"]
        newest = max(mine, key=lambda e: e.version, default=None)
        if newest is not None and recap_of(newest).totals == totals and not _overtaken(newest):
            return await self.outbox.put(newest.payload, newest.signature, newest.device_id)
        published = (snapshot.reconciliation or {}).get("recap_version") or 0
        version = max([published, *(e.version for e in mine), *(e.current_version or 0 for e in mine)]) + 1
        signed = sign_recap(key, contest, version, totals, self._clock_ms())
        return await self.outbox.put(signed.payload, signed.signature, signed.official_id)

    async def send(self, entry: Entry) -> Attempt:
        request = aggregate_pb2.SubmitRecapRequest(
            recap=aggregate_pb2.SignedRecap(
                payload=entry.payload, signature=entry.signature, official_id=entry.device_id
            )
        )
        try:
            response = await aggregate_stub(self._connect()).SubmitRecap(request, timeout=self.call_timeout_s)
        except grpc.aio.AioRpcError as error:
            return await self._failed(entry, error.code(), error.details() or error.code().name, error)
        name = outcome_name(response.outcome)
        # A recap is outside tally's chain: its receipt is aggregate's recap id and the payload's hash.
        receipt = Receipt(response.recap_id, hashlib.sha256(entry.payload).hexdigest(), 0, "", "")
        sent = await self.outbox.mark_sent(entry.id, name, receipt, (), response.current_version)
        return Attempt(sent, retry=False, outcome=name)

    async def send_batch(self, entries: Sequence[Entry]) -> list[Attempt]:
        return [await self.send(entry) for entry in entries]


def _overtaken(entry: Entry) -> bool:
    """aggregate holds another recap at or above this one's version: sending it again changes nothing."""
    return entry.outcome == "SUPERSEDED" or (entry.state == "rejected" and entry.last_code == CONFLICT_CODE)


def recap_counts(entry: Entry) -> Counts:
    return from_totals(recap_of(entry).totals)


def write_json(path: Path, data: Any) -> None:
    """Whole or not at all: written beside, flushed to disk, then renamed over the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.new")
    with aside.open("w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    aside.replace(path)


def sheet_paths(directory: Path, area: str, contest: str) -> tuple[Path, Path]:
    """The snapshot and the paper of (area, contest) in the official's directory."""
    return directory / f"{area}-{contest}.snapshot.json", directory / f"{area}-{contest}.paper.json"


def load_snapshot(path: Path) -> Snapshot:
    return Snapshot.from_json(json.loads(path.read_text()))


def load_paper(path: Path) -> dict[str, Counts]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {code: dict(counts) for code, counts in data["units"].items()}


def save_paper(path: Path, snapshot: Snapshot, paper: Mapping[str, Counts]) -> None:
    write_json(path, {"area": snapshot.area, "contest": snapshot.contest, "units": dict(paper)})
