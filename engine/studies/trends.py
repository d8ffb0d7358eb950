"""Whether a sweep's rows bear out its experiment's paragraph: each `Claim` measured on the rows,
from the first cell of a series to its last, against the ranges over the repeats (engine/studies/
experiments.py holds the claims beside the paragraphs), so that a chart that contradicts its
paragraph says so.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from engine import quality
from engine.studies.experiments import Claim, Experiment, spread
from engine.variants import REFERENCE


def _series(claim: Claim, rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """(name, rows in the order of x) of each series of rows the claim is about."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get(claim.y) is not None
          and all(r.get(key) == value for key, value in claim.where.items())]
    if claim.x == "variant":                      # one row per variant: each step along the variants' order
        by = {r["variant"]: r for r in ok}
        along = [by[v] for v in claim.variants if v in by]
        return [(f"{a['variant']} to {b['variant']}", [a, b]) for a, b in zip(along, along[1:])]
    ratio = claim.y == "speedup_vs_baseline"      # the reference's ratio to itself is 1 everywhere
    chosen = claim.variants or [v for v in dict.fromkeys(r["variant"] for r in ok) if not (ratio and v == REFERENCE)]
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in ok:
        if row["variant"] in chosen:
            groups.setdefault((row["variant"], row.get("pad_ratio") or 0.0), []).append(row)
    return [(variant + (f", {pad:.0%} padding" if pad else ""), sorted(members, key=lambda r: r[claim.x]))
            for (variant, pad), members in groups.items() if len({r[claim.x] for r in members}) >= 2]


def _change(claim: Claim, name: str, members: list[dict]) -> dict:
    """How `claim.y` changed from the series' first cell to its last: the medians' ratio, and its range
    from the two rows' ranges over their repeats (None: a row has no range)."""
    first, last = members[0], members[-1]
    low, high = spread(first, claim.y), spread(last, claim.y)
    ranged = low is not None and high is not None and low[0] > 0
    return {"series": name, "variant": first["variant"], "pad_ratio": first.get("pad_ratio"),
            "from": {"x": first[claim.x], "value": first[claim.y]}, "to": {"x": last[claim.x], "value": last[claim.y]},
            "change": last[claim.y] / first[claim.y] if first[claim.y] else None,
            "change_min": high[0] / low[1] if ranged else None, "change_max": high[1] / low[0] if ranged else None,
            "rows": 2, "busy_rows": sum(bool(r.get("host_busy")) for r in (first, last))}


def _beyond(mine: dict, theirs: tuple[float, float], direction: int) -> bool | None:
    """True when the whole range of `mine` lies past `theirs` the claimed way, False when it lies past it
    the other way, None when the ranges overlap (noise) or a range is unknown."""
    if mine["change_min"] is None:
        return None
    low, high = mine["change_min"], mine["change_max"]
    their_low, their_high = theirs
    if direction < 0:                                  # falls: the same test on the negated ranges
        low, high, their_low, their_high = -high, -low, -their_high, -their_low
    return True if low > their_high else False if high < their_low else None


def _judge(claim: Claim, series: list[tuple[str, list[dict]]], rows: list[dict]) -> list[dict]:
    """Each series' change, and whether it bears the claim out (`agrees`: True, False, None for noise)."""
    changes = [_change(claim, name, members) for name, members in series]
    if claim.faster_than is None:
        for change in changes:
            change["agrees"] = _beyond(change, (1.0, 1.0), claim.direction)
        return changes
    theirs = replace(claim, variants=(claim.faster_than,), faster_than=None)
    others = {(c["pad_ratio"] or 0.0): c for c in (_change(theirs, name, members)
                                                   for name, members in _series(theirs, rows))}
    judged = []
    for change in changes:
        other = others.get(change["pad_ratio"] or 0.0)
        if other is None:
            continue
        known = other["change_min"] is not None
        change.update(than=other, agrees=_beyond(change, (other["change_min"], other["change_max"]), claim.direction)
                      if known else None, rows=4, busy_rows=change["busy_rows"] + other["busy_rows"])
        judged.append(change)
    return judged


def _span(x: str, first, last) -> str:
    return {"prompt_length": f"from {first} to {last} prompt tokens", "batch_size": f"from batch {first} to {last}",
            "max_new_tokens": f"from {first} to {last} new tokens"}.get(x, f"from {first} to {last}")


def _factor(change: dict) -> str:
    """x1.23 (range 1.10-1.40): the change of the medians and its range over the repeats."""
    if change["change_min"] is None:
        return f"x{change['change']:.2f} (one repeat: no range)"
    if change["change_min"] == change["change_max"]:            # figures measured once per row: exact
        return f"x{change['change']:.2f}"
    return f"x{change['change']:.2f} (range {change['change_min']:.2f}-{change['change_max']:.2f})"


def _measured(claim: Claim, change: dict, text: Callable[[str, float], str]) -> str:
    """One series' change in words: its figures at the two ends and the factor between them."""
    first, last = (text(claim.y, change[end]["value"]) for end in ("from", "to"))
    if claim.x == "variant":
        said = f"{change['from']['x']} {first}, {change['to']['x']} {last}: {_factor(change)}"
    else:
        said = (f"{change['series']}: {first} to {last} {_span(claim.x, change['from']['x'], change['to']['x'])}: "
                f"{_factor(change)}")
    if "than" in change:
        said += f"; {change['than']['series']}: {_factor(change['than'])}"
    return said


def trend(claim: Claim, rows: list[dict], text: Callable[[str, float], str] | None = None) -> dict:
    """Whether the rows bear `claim` out: {claim, measured, agrees, note, series}.

    Each series (a variant, at a padding) is judged from its first cell to its last: the claim holds
    when the change's whole range (from the two rows' ranges over their repeats) lies on the claimed
    side, is contradicted when it lies on the other, and is noise when the range straddles it. `agrees`:
    True when some series bear it out and none contradict it, False when any contradicts it, None when
    every series is noise (or has one repeat, or there is nothing to judge). `text(field, value)`
    formats a figure (default: four significant digits).
    """
    text = text or (lambda name, value: f"{value:.4g}")
    changes = _judge(claim, _series(claim, rows), rows)
    verdicts = [c["agrees"] for c in changes]
    agrees = False if False in verdicts else True if True in verdicts else None
    yes = [c["series"] for c in changes if c["agrees"] is True]
    no = [c["series"] for c in changes if c["agrees"] is False]
    if not changes:
        note = f"On this run nothing could be judged: {_missing(claim, rows)}."
    elif agrees:
        note = f"On this run, as the paragraph says: {claim.text}."
    elif agrees is False:
        where = "" if len(no) == len(changes) else f" for {', '.join(no)}" + (f" (it did for {', '.join(yes)})"
                                                                               if yes else "")
        slowed = all(c["busy_rows"] for c in changes if c["agrees"] is False)
        note = f"On this run {claim.contrary}{where}" + (
            ", but other processes slowed rows it compares: rerun with less running beside it before reading a "
            "trend into it." if slowed else f": {claim.why}.")
    elif all(c["change_min"] is None for c in changes):
        note = "On this run one request per cell: no range over repeats to tell a trend from noise."
    else:
        note = (f"On this run the change stayed within the repeats' spread: noise, so the chart neither shows nor "
                f"refutes that {claim.text}. Rerun, or run the full grid.")
    busy = sum(c["busy_rows"] for c in changes)
    if busy:
        note += (f" {busy} of the {sum(c['rows'] for c in changes)} rows compared {'was' if busy == 1 else 'were'} "
                 "slowed by other processes on the CPU.")
    return {"claim": claim.text, "measured": "; ".join(_measured(claim, c, text) for c in changes) or "-",
            "agrees": agrees, "note": note, "series": changes}


def _missing(claim: Claim, rows: list[dict]) -> str:
    """Why a claim had no rows to judge: for a quality figure, the rows' own reason ("not meaningful: random
    weights"), else that the rows did not run."""
    if claim.y in quality.FIELDS:
        notes = dict.fromkeys(row["quality_note"] for row in rows if row.get("quality_note")
                              and (not claim.variants or row["variant"] in claim.variants))
        if notes:
            return f"its figure is {'; '.join(notes)}"
    return "the rows it needs did not run"


def trends(experiment: Experiment, rows: list[dict], text: Callable[[str, float], str] | None = None) -> list[dict]:
    """`trend` of each of the experiment's claims."""
    return [trend(claim, rows, text) for claim in experiment.claims]
