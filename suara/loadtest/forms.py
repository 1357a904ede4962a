"""The forms the virtual devices sign, generated from (seed, TPS, contest, version, variant) alone.

Regenerating a form from its key is what lets the oracle keep only "which version, which variant"
per TPS (a few bytes) instead of 823,000 forms of up to a hundred counts each.

The arithmetic is design.md's rules written out, independent of suara.election.checks:
choices sum to suara_sah, sah + tidak_sah = total, total ≤ users, users = DPT + DPTb + DPK users,
j = l + p, and nothing above DPT × 1.02 + DPTb + DPK.
"""

from __future__ import annotations

import random
from typing import Literal

from suara.election.form import set_voter_counts
from suara.v1 import form_pb2

Variant = Literal["ok", "inconsistent", "malformed"]
VARIANTS: tuple[Variant, ...] = ("ok", "inconsistent", "malformed")


def votes_of(seed: int, tps: str, contest: str, version: int, variant: Variant, choices: tuple[str, ...]) -> list[int]:
    """The votes per choice (in `choices` order) of that form, as signed."""
    votes = _generate(seed, tps, contest, version, variant, choices)[1]
    return [votes[c] for c in choices]


def make_form(
    seed: int, tps: str, contest: str, version: int, variant: Variant, choices: tuple[str, ...]
) -> form_pb2.CHasilForm:
    form, _ = _generate(seed, tps, contest, version, variant, choices)
    return form


def _generate(
    seed: int, tps: str, contest: str, version: int, variant: Variant, choices: tuple[str, ...]
) -> tuple[form_pb2.CHasilForm, dict[str, int]]:
    rng = random.Random(f"{seed}:{tps}:{contest}:{version}:{variant}")
    dpt = rng.randint(150, 300)
    dpt_l = rng.randint(0, dpt)
    users_dpt = rng.randint(dpt // 2, dpt)
    users_dpt_l = rng.randint(0, users_dpt)
    dptb, dpk = rng.randint(0, 3), rng.randint(0, 3)
    dptb_l, dpk_l = rng.randint(0, dptb), rng.randint(0, dpk)
    users = users_dpt + dptb + dpk
    total = max(0, users - rng.randint(0, 2))
    invalid = rng.randint(0, min(5, total))
    valid = total - invalid
    # Skewed shares (a few choices take most votes, as in a real count), the rounding rest to the first.
    weights = [rng.random() ** 3 + 1e-9 for _ in choices]
    scale = valid / sum(weights)
    counts = [int(w * scale) for w in weights]
    counts[0] += valid - sum(counts)
    votes = dict(zip(choices, counts, strict=True))
    if variant == "inconsistent":
        votes[choices[0]] += 7  # an officer's slip: the choices no longer add up to suara_sah
    form = form_pb2.CHasilForm(tps=tps, contest=contest, version=version, votes=votes)
    form.suara_sah, form.suara_tidak_sah, form.suara_total = valid, invalid, total
    if variant == "malformed":
        form.suara_tidak_sah = -1  # a negative count: refused with INVALID_ARGUMENT, never stored
    set_voter_counts(
        form,
        (
            ("pemilih_dpt", dpt, dpt_l),
            ("pengguna_dpt", users_dpt, users_dpt_l),
            ("pengguna_dptb", dptb, dptb_l),
            ("pengguna_non_dpt", dpk, dpk_l),
            ("pengguna_total", users, users_dpt_l + dptb_l + dpk_l),
        ),
    )
    # A fixed signing time: the same key always signs the same bytes, so a resend is a DUPLICATE.
    form.signed_at_unix_ms = 1_707_800_000_000 + version
    return form, votes


def administrasi_of(form: form_pb2.CHasilForm) -> dict[str, int]:
    """Sirekap's flat administrasi dict, written out from LAYOUT.md's 18 keys."""
    out = {"suara_sah": form.suara_sah, "suara_tidak_sah": form.suara_tidak_sah, "suara_total": form.suara_total}
    for name in ("pemilih_dpt", "pengguna_dpt", "pengguna_dptb", "pengguna_non_dpt", "pengguna_total"):
        triple = getattr(form, name)
        out.update({f"{name}_j": triple.j, f"{name}_l": triple.l, f"{name}_p": triple.p})
    return out
