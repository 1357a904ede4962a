"""The forms the virtual devices sign, generated from (seed, TPS, contest, version, variant) alone.

Regenerating a form from its key is what lets the oracle keep only "which version, which variant"
per TPS (a few bytes) instead of 823,000 forms of up to a hundred counts each.

The numbers come first, as plain ints (`numbers`): the devices build the signed protobuf from them
(`make_form`), the oracle reads the votes and the administrasi from them directly (`votes_of`,
`administrasi`), so verifying a site does not build 823,000 protobufs to read them back — and both
sides see the same numbers by construction.

The arithmetic is docs/domain.md's rules written out, independent of suara.election.checks:
choices sum to suara_sah, sah + tidak_sah = total, total ≤ users, users = DPT + DPTb + DPK users,
j = l + p, and nothing above DPT × 1.02 + DPTb + DPK.
"""

from __future__ import annotations

import random
from typing import Literal, NamedTuple

from suara.election.form import Triple, set_voter_counts
from suara.v1 import form_pb2

Variant = Literal["ok", "inconsistent", "malformed"]
VARIANTS: tuple[Variant, ...] = ("ok", "inconsistent", "malformed")
VOTER_COUNTS: tuple[Triple, ...] = (
    "pemilih_dpt",
    "pengguna_dpt",
    "pengguna_dptb",
    "pengguna_non_dpt",
    "pengguna_total",
)


class Numbers(NamedTuple):
    """Every count of one form, as signed."""

    votes: list[int]  # per choice, in `choices` order
    suara_sah: int
    suara_tidak_sah: int
    suara_total: int
    voters: tuple[tuple[int, int], ...]  # (j, l) of each of VOTER_COUNTS, in that order; p = j - l


def numbers(seed: int, tps: str, contest: str, version: int, variant: Variant, choices: tuple[str, ...]) -> Numbers:
    rng = random.Random(f"{seed}:{tps}:{contest}:{version}:{variant}")
    bits = rng.getrandbits

    def randint(a: int, b: int) -> int:
        """`rng.randint(a, b)`, drawn the same way (rejection sampling on getrandbits) at a third of the cost."""
        n = b - a + 1
        k = n.bit_length()
        r = bits(k)
        while r >= n:
            r = bits(k)
        return a + r

    dpt = randint(150, 300)
    dpt_l = randint(0, dpt)
    users_dpt = randint(dpt // 2, dpt)
    users_dpt_l = randint(0, users_dpt)
    dptb, dpk = randint(0, 3), randint(0, 3)
    dptb_l, dpk_l = randint(0, dptb), randint(0, dpk)
    users = users_dpt + dptb + dpk
    total = max(0, users - randint(0, 2))
    invalid = randint(0, min(5, total))
    valid = total - invalid
    # Skewed shares (a few choices take most votes, as in a real count), the rounding rest to the first.
    draw = rng.random
    weights = [draw() ** 3 + 1e-9 for _ in choices]
    scale = valid / sum(weights)
    counts = [int(w * scale) for w in weights]
    counts[0] += valid - sum(counts)
    if variant == "inconsistent":
        counts[0] += 7  # an officer's slip: the choices no longer add up to suara_sah
    if variant == "malformed":
        invalid = -1  # a negative count: refused with INVALID_ARGUMENT, never stored
    voters = ((dpt, dpt_l), (users_dpt, users_dpt_l), (dptb, dptb_l), (dpk, dpk_l),
              (users, users_dpt_l + dptb_l + dpk_l))  # fmt: skip
    return Numbers(counts, valid, invalid, total, voters)


def votes_of(seed: int, tps: str, contest: str, version: int, variant: Variant, choices: tuple[str, ...]) -> list[int]:
    """The votes per choice (in `choices` order) of that form, as signed."""
    return numbers(seed, tps, contest, version, variant, choices).votes


def make_form(
    seed: int, tps: str, contest: str, version: int, variant: Variant, choices: tuple[str, ...]
) -> form_pb2.CHasilForm:
    n = numbers(seed, tps, contest, version, variant, choices)
    votes = dict(zip(choices, n.votes, strict=True))
    form = form_pb2.CHasilForm(tps=tps, contest=contest, version=version, votes=votes)
    form.suara_sah, form.suara_tidak_sah, form.suara_total = n.suara_sah, n.suara_tidak_sah, n.suara_total
    set_voter_counts(form, ((name, j, l) for name, (j, l) in zip(VOTER_COUNTS, n.voters, strict=True)))
    # A fixed signing time: the same key always signs the same bytes, so a resend is a DUPLICATE.
    form.signed_at.FromMilliseconds(1_707_800_000_000 + version)
    return form


def administrasi(n: Numbers) -> dict[str, int]:
    """Sirekap's flat administrasi dict, written out from docs/layout.md's 18 keys (p = j - l)."""
    (dpt, dpt_l), (dpt_u, dpt_ul), (dptb, dptb_l), (dpk, dpk_l), (users, users_l) = n.voters
    return {
        "suara_sah": n.suara_sah, "suara_tidak_sah": n.suara_tidak_sah, "suara_total": n.suara_total,
        "pemilih_dpt_j": dpt, "pemilih_dpt_l": dpt_l, "pemilih_dpt_p": dpt - dpt_l,
        "pengguna_dpt_j": dpt_u, "pengguna_dpt_l": dpt_ul, "pengguna_dpt_p": dpt_u - dpt_ul,
        "pengguna_dptb_j": dptb, "pengguna_dptb_l": dptb_l, "pengguna_dptb_p": dptb - dptb_l,
        "pengguna_non_dpt_j": dpk, "pengguna_non_dpt_l": dpk_l, "pengguna_non_dpt_p": dpk - dpk_l,
        "pengguna_total_j": users, "pengguna_total_l": users_l, "pengguna_total_p": users - users_l,
    }  # fmt: skip
