"""The recap sheet: the paper read from a file exactly as written, compiled into the recap, compared."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suara.election.recap_sheet import (
    SCALARS,
    Choice,
    Counts,
    PaperError,
    Snapshot,
    Unit,
    compile_sheet,
    parse_count,
    read_paper,
)

CHOICES = [Choice("100025", "A", 1), Choice("100026", "B", 2), Choice("100027", "C", 3)]
CODES = [f"3101011001{n:03d}" for n in range(1, 6)]
FIELDS = [f"votes[{c.id}]" for c in CHOICES] + list(SCALARS)


def snapshot(digital: dict[str, Counts | None] | None = None) -> Snapshot:
    units = [Unit(code, f"TPS {code[-3:]}", (digital or {}).get(code)) for code in CODES]
    return Snapshot("310101", "ppwp", "KEC", CHOICES, units, "test", "2024-02-15T00:00:00Z")


def with_separators(n: int, style: str) -> str:
    """A count as people write it: plain, 1.030 (Indonesian), 1,030, or 1 030."""
    return f"{n:,}".replace(",", style) if style else str(n)


paper_strategy = st.dictionaries(
    st.sampled_from(CODES),
    st.fixed_dictionaries({f: st.integers(0, 10**9) for f in FIELDS}),
    min_size=1,
)


@given(paper=paper_strategy, style=st.sampled_from(["", ".", ",", " "]), by_number=st.booleans())
def test_a_csv_of_the_paper_reads_back_exactly(paper: dict[str, Counts], style: str, by_number: bool) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    # Choices named by id, or by nomor urut as a person might; the name column is ignored.
    writer.writerow(["kode", "nama", *(str(c.number) if by_number else c.id for c in CHOICES), *SCALARS])
    for code, counts in paper.items():
        writer.writerow([code, "TPS", *(with_separators(counts[f], style) for f in FIELDS)])
    assert read_paper(out.getvalue(), snapshot()) == paper
    assert read_paper(json.dumps(paper), snapshot()) == paper  # the JSON form, too


def test_every_problem_of_a_file_is_named_by_unit_and_field() -> None:
    text = (
        "kode,100025,100026,100027,suara_sah,suara_tidak_sah,suara_total,dpt,pengguna,extra\n"
        f"{CODES[0]},1,2,x,3,0,3,10,3,1\n"
        f"{CODES[1]},1,2,,3,0,3,10,3,\n"
        f"{CODES[1]},1,2,3,6,0,6,10,6,\n"
        "9999,1,1,1,1,1,1,1,1,\n"
    )
    with pytest.raises(PaperError) as err:
        read_paper(text, snapshot())
    assert err.value.problems == [
        f"{CODES[0]}.votes[100027]: 'x' is not a whole number",
        f"{CODES[0]}.extra: unknown column (choices are named by id or nomor urut)",
        f"{CODES[1]}.votes[100027]: empty (write 0 where the paper has none)",
        f"{CODES[1]}.extra: unknown column (choices are named by id or nomor urut)",
        f"{CODES[1]}: given twice; keep the line read out in the plenary",
        "9999: not a unit of 310101 (see `suara recap show`)",
    ]
    with pytest.raises(PaperError, match="starting with `kode`"):
        read_paper("tps,100025\n1,2\n", snapshot())
    with pytest.raises(ValueError, match="typo"):
        parse_count("1.000.000.001")


def test_compiling_the_sheet_sums_the_paper_and_names_each_difference() -> None:
    digital: Counts = {"votes[100025]": 10, "votes[100026]": 5, "votes[100027]": 0, "suara_sah": 15,
                       "suara_tidak_sah": 1, "suara_total": 16, "dpt": 30, "pengguna": 16}  # fmt: skip
    sheet = snapshot({code: dict(digital) for code in CODES[:4]})  # the last TPS has no counted form
    paper = {code: dict(digital) for code in CODES[:3]}
    paper[CODES[1]] |= {"votes[100026]": 7, "suara_sah": 17}
    partial = compile_sheet(sheet, paper)
    assert partial.recap is None and partial.missing_paper == CODES[3:]

    paper[CODES[3]] = dict(digital)
    paper[CODES[4]] = {f: 1 for f in FIELDS}
    full = compile_sheet(sheet, paper)
    # The oracle: each field summed over the units by hand.
    assert full.recap == {f: 4 * digital[f] + 1 + {"votes[100026]": 2, "suara_sah": 2}.get(f, 0) for f in FIELDS}
    assert full.digital == {f: 4 * digital[f] for f in FIELDS}
    assert full.no_digital == [CODES[4]]
    assert {u: [(d.field, d.paper, d.digital) for d in ds] for u, ds in full.differences.items()} == {
        CODES[1]: [("votes[100026]", 7, 5), ("suara_sah", 17, 15)]
    }
