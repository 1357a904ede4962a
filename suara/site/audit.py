"""`suara audit site`, and the load test's verification: check, from the published files alone, the chain
heads a site carries.

Every head (the pointer's and each history entry's) must be validly signed by a key of
suara/kunci-rantai.json, and heads only grow: along the snapshots, the position never goes down,
and two heads at the same position have the same hash. A chain cut back (records deleted, the head
row reset) or rewritten after a head was published breaks one or the other the next time a head is
published; `suara audit verify --against` then says which records no longer match.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suara.election.chain import SignedHead
from suara.election.signing import PUBLIC_KEY_BYTES, chain_key_id_for
from suara.site import paths

Reader = Callable[[str], object]  # a site path → its parsed JSON, None when the site has no such file


class SiteUnreadable(RuntimeError):
    """A file exists but cannot be read or parsed, or the site cannot be reached at all."""


def site_reader(source: str) -> Reader:
    """Files of a site directory, or of a site at an http(s):// URL."""
    if source.startswith(("http://", "https://")):
        base = source.rstrip("/")

        def fetch(path: str) -> object:
            try:
                with urllib.request.urlopen(f"{base}/{path}", timeout=30) as reply:  # http(s) only
                    return json.loads(reply.read())
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                raise SiteUnreadable(f"{base}/{path}: HTTP {exc.code}") from exc
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise SiteUnreadable(f"{base}/{path}: {exc}") from exc

        return fetch
    root = Path(source)
    if not root.is_dir():
        raise SiteUnreadable(f"{source}: not a directory, nor an http(s):// URL")

    def read(path: str) -> object:
        try:
            return json.loads((root / path).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SiteUnreadable(f"{root / path}: {exc}") from exc

    return read


@dataclass(frozen=True)
class PublishedHead:
    where: str  # the site path that carries it
    snapshot: int
    head: SignedHead


@dataclass
class SiteReport:
    keys: dict[str, bytes] = field(default_factory=dict)
    heads: list[PublishedHead] = field(default_factory=list)  # validly signed, in snapshot order
    unsigned: int = 0  # history entries published before heads were signed
    chains: int = 1  # how many chains the heads are of
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def newest(self) -> PublishedHead | None:
        return max(self.heads, key=lambda h: (h.head.position, h.snapshot)) if self.heads else None


def audit_site(read: Reader, trusted: frozenset[str] = frozenset()) -> SiteReport:
    """`trusted`: key ids the auditor knows from elsewhere; when given, a head signed by any other fails."""
    report = SiteReport()
    report.keys = _keys(read, report.problems)
    pointer = read(paths.POINTER)
    if not isinstance(pointer, dict):
        report.problems.append(f"{paths.POINTER}: missing or not an object: nothing is published")
        return report
    found: list[tuple[str, int, object]] = [(paths.POINTER, _int(pointer.get("snapshot")), _heads_of(pointer))]
    for contest in pointer.get("contests") or {}:
        found += _history(read, contest, report)
    found.sort(key=lambda f: (f[1], f[0] == paths.POINTER))  # the pointer after the history of its snapshot
    signed_seen = False
    for where, snapshot, raws in found:
        if raws is None:
            if where == paths.POINTER or signed_seen:
                report.problems.append(f"{where}: carries no signed chain head")
            report.unsigned += 1
            continue
        signed_seen = True
        try:
            heads = _parse_heads(raws)
        except ValueError as exc:
            report.problems.append(f"{where}: {exc}")
            continue
        for head in heads:
            report.chains = max(report.chains, head.chains)
            of = f"chain {head.chain} " if head.chains > 1 else ""
            key = report.keys.get(head.key_id)
            if key is None or (trusted and head.key_id not in trusted):
                known = "not trusted" if key is not None else f"not in {paths.CHAIN_KEYS}"
                report.problems.append(
                    f"{where}: {of}head at position {head.position} is signed by key {head.key_id}, {known}"
                )
            elif not head.signed_by(key):
                report.problems.append(
                    f"{where}: {of}head at position {head.position} ({head.hash.hex()}) is not validly signed by "
                    f"{head.key_id}"
                )
            else:
                report.heads.append(PublishedHead(where, snapshot, head))
    for chain in sorted({h.head.chain for h in report.heads}):
        report.problems += _growth([h for h in report.heads if h.head.chain == chain])
    return report


def _heads_of(document: dict[str, Any]) -> object:
    """What a pointer or history entry carries: every chain's head (`chain_heads`, several chains) or the
    one `chain_head`; None when it carries none. With several, `chain_head` must be chain 0's: a reader
    that knows only `chain_head` must not be shown a head the audit did not check."""
    several = document.get("chain_heads")
    if several is None:
        return document.get("chain_head")
    if not isinstance(several, list) or not several or document.get("chain_head") != several[0]:
        return {"chain_head": document.get("chain_head"), "chain_heads[0]": several}
    return several


def _parse_heads(raws: object) -> list[SignedHead]:
    """The heads of one document: one, or all K of several chains (each chain once, all saying K)."""
    if not isinstance(raws, list):
        return [parse_signed_head(raws)]
    heads = [parse_signed_head(raw) for raw in raws]
    chains = {h.chains for h in heads}
    if len(chains) != 1 or sorted(h.chain for h in heads) != list(range(max(chains))):
        got = sorted((h.chain, h.chains) for h in heads)
        raise ValueError(f"chain_heads must hold each of the K chains' heads once, all saying K; got (chain, K) {got}")
    return heads


def parse_signed_head(value: object) -> SignedHead:
    """A chain head as the pointer and every history entry carry it (docs/layout.md: publish's
    `documents.signed_head`); ValueError (saying what is wrong) for anything else."""
    if not isinstance(value, dict):
        raise ValueError(f"a chain head is an object, got {type(value).__name__}")
    try:
        position, head_hash, key_id, signature = (value[k] for k in ("position", "hash", "key_id", "signature"))
        chain, chains = value.get("chain", 0), value.get("chains", 1)
        if not (
            all(isinstance(n, int) and not isinstance(n, bool) for n in (position, chain, chains))
            and isinstance(key_id, str)
            and 0 <= chain < chains
        ):
            raise TypeError
        return SignedHead(position, bytes.fromhex(head_hash), key_id, bytes.fromhex(signature), chain, chains)
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"a chain head has position, hash, key_id and signature (and chain and chains, with several), got {value!r}"
        ) from None


def _keys(read: Reader, problems: list[str]) -> dict[str, bytes]:
    document = read(paths.CHAIN_KEYS)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        problems.append(f"{paths.CHAIN_KEYS}: missing or without a list of keys: no head can be checked")
        return {}
    keys = {}
    for entry in entries:
        try:
            key_id, public_key = entry["key_id"], bytes.fromhex(entry["public_key"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{paths.CHAIN_KEYS}: not a key_id and a hex public_key: {entry!r}")
            continue
        if len(public_key) != PUBLIC_KEY_BYTES or chain_key_id_for(public_key) != key_id:
            problems.append(f"{paths.CHAIN_KEYS}: key {key_id!r} is not the id of its public key")
            continue
        keys[key_id] = public_key
    return keys


def _history(read: Reader, contest: str, report: SiteReport) -> list[tuple[str, int, object]]:
    index_path = paths.history_index_path(contest)
    index = read(index_path)
    if not isinstance(index, list):
        report.problems.append(f"{index_path}: missing or not a list")
        return []
    found = []
    for item in index:
        snapshot = _int(item.get("snapshot") if isinstance(item, dict) else None)
        where = paths.history_path(contest, snapshot)
        entry = read(where)
        if not isinstance(entry, dict):
            report.problems.append(f"{where}: listed in {index_path} but missing")
        elif entry.get("snapshot") != snapshot:
            report.problems.append(f"{where}: says snapshot {entry.get('snapshot')!r}")
        else:
            found.append((where, snapshot, _heads_of(entry)))
    return found


def _growth(heads: list[PublishedHead]) -> list[str]:
    """Along the snapshots, positions never go down; one position, one hash."""
    problems = []
    highest: PublishedHead | None = None
    at: dict[int, PublishedHead] = {}
    for h in heads:
        if highest is not None and h.head.position < highest.head.position:
            problems.append(
                f"{h.where}: head at position {h.head.position} (snapshot {h.snapshot}) after a head at "
                f"position {highest.head.position} ({highest.where}): the chain was cut back"
            )
        if highest is None or h.head.position >= highest.head.position:
            highest = h
        first = at.setdefault(h.head.position, h)
        if first.head.hash != h.head.hash:
            problems.append(
                f"{h.where}: head at position {h.head.position} is {h.head.hash.hex()}, but {first.where} "
                f"published {first.head.hash.hex()} there: the chain was rewritten"
            )
    return problems


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
