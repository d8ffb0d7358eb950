"""The run history as text: the comparison of runs (engine/history_compare.py `compare`), a saved run, the
list of runs, each with the quality figures where the runs have them (engine/quality_table.py's formats);
the command line prints these and the History tab shares their words."""
from __future__ import annotations

from engine import quality_table
from engine.history import Entry
from engine.history_compare import QUALITY_FIGURES, Compared, cell_label
from engine.views import tables

# Change.metric -> (the figure's name in a table, its value as a cell)
FIGURES = {"ttft": ("TTFT ms", lambda v: tables.ms(v, 2)), "tpot": ("TPOT ms", lambda v: tables.ms(v, 2)),
           "tokens_per_s": ("tok/s", tables.fixed), "memory": ("peak memory", tables.size),
           "agreement": ("same top token", quality_table.agreement), "kld_mean": ("mean KLD", quality_table.kld),
           "kld_p99": ("KLD p99", quality_table.kld), "kld_max": ("KLD max", quality_table.kld),
           "perplexity": ("perplexity", lambda v: tables.fixed(v, 2))}
QUALITY_NOTE = ("quality: each run's variant scored its reference variant's answer once, off the clock (engine/"
                "quality.py): the change is stated, with no range to judge it by; runs with other prompts scored "
                "other answers")


def percent_text(change: float | None, word: str | None) -> str:
    """A change from the reference, "+3.1% within noise"; a dash where there is none."""
    if change is None:
        return tables.DASH
    number = f"{change:+.1f}%" if abs(change) < 100 else f"{change:+.0f}%"
    return f"{number} {word}" if word else number


def compare_table(compared: Compared, labels: list[str]) -> str:
    """The comparison as a fixed-width table: each run's value, then each other run's change from the reference."""
    ref = labels[compared.reference]
    others = [i for i in range(len(labels)) if i != compared.reference]
    with_cells = any(change.cell for change in compared.changes)
    head = ["variant"] + ["cell"] * with_cells + ["figure"] + [
        f"{label} (ref)" if i == compared.reference else label for i, label in enumerate(labels)]
    rows = [head + [f"{labels[i]} vs {ref}" for i in others]]
    for change in compared.changes:
        title, show = FIGURES[change.metric]
        rows.append([change.variant] + [change.cell or tables.DASH] * with_cells + [title]
                    + [show(v) for v in change.values]
                    + [percent_text(change.percent[i], change.verdicts[i]) for i in others])
    lines = tables.fixed_width(rows).splitlines()
    if not compared.changes:
        lines.append(f"nothing to compare: no variant (and cell) of {ref} is in another run")
    lines.append(f"vs {ref}: the change of the median; better or worse when the runs' min-max ranges over their "
                 "repeats do not overlap, within noise when they do (peak memory within 1% is the same), no range "
                 "with one repeat (engine/verdict.py)")
    if any(change.metric in QUALITY_FIGURES for change in compared.changes):
        lines.append(QUALITY_NOTE)
    lines += [f"note: {note}" for note in comparison_notes(compared, labels)]
    return "\n".join(lines)


def target_rows(reports: list[dict], compared: Compared, with_cells: bool) -> list[list[str]]:
    """Per variant (and cell), each run's requests that met the targets and its goodput (engine/slo.py)."""
    rows, seen = [], []
    keyed = [{(r["variant"], cell_label(r)): r for r in report["results"]} for report in reports]
    for change in compared.changes:
        key = (change.variant, change.cell)
        if key in seen:
            continue
        seen.append(key)
        found = [rows_of.get(key) for rows_of in keyed]
        met = [f"{r['slo_good_requests']} of {r['slo_requests']}" if r and r.get("slo_requests") else tables.DASH
               for r in found]
        good = [f"{r['goodput_rps']:.2f} of {r['request_throughput_rps']:.2f}" if r and r.get("goodput_rps")
                is not None else tables.DASH for r in found]
        head = [change.variant] + [change.cell or tables.DASH] * with_cells
        others = [tables.DASH] * (len(reports) - 1)
        rows += [head + ["requests met targets"] + others + met, head + ["goodput req/s"] + others + good]
    return rows


def comparison_value(compared: Compared, labels: list[str], reports: list[dict] | None = None) -> dict:
    """The comparison as the History tab shows it (headers and rows): each other run's change from the
    reference, then each run's value; with targets (`reports` judged by engine/slo.py), how many requests
    met them and the goodput."""
    ref = labels[compared.reference]
    others = [i for i in range(len(labels)) if i != compared.reference]
    with_cells = any(change.cell for change in compared.changes)
    # the changes before the values: on a phone they are the columns that show without scrolling
    headers = (["variant"] + ["cell"] * with_cells + ["figure"] + [f"{labels[i]} vs {ref}" for i in others]
               + [f"{label} (ref)" if i == compared.reference else label for i, label in enumerate(labels)])
    rows = []
    for change in compared.changes:
        title, show = FIGURES[change.metric]
        rows.append([change.variant] + [change.cell or tables.DASH] * with_cells + [title]
                    + [percent_text(change.percent[i], change.verdicts[i]) for i in others]
                    + [show(v) for v in change.values])
    if reports and reports[0].get("slo"):
        rows += target_rows(reports, compared, with_cells)
    return {"headers": headers, "data": rows}


def comparison_notes(compared: Compared, labels: list[str]) -> list[str]:
    """What the reader must know beside the table: settings that differ, rows left out."""
    ref = labels[compared.reference]
    found = [f"the runs differ in {name} (" + "; ".join(f"{label}: {value}" for label, value in zip(labels, seen))
             + "): a change may come from that, not from the variant" for name, seen in compared.differs.items()]
    for index, keys in compared.left_out.items():
        rows = ", ".join(variant + (f" at {cell}" if cell else "") for variant, cell in keys)
        found.append(f"left out, as only {labels[index]} has them: {rows}" if index == compared.reference
                     else f"left out, as {ref} does not have them: {labels[index]}'s {rows}")
    return found


def describe(entry: Entry) -> str:
    """A saved run as text: its provenance, then one line per row, then its verdict."""
    s = entry.settings
    asked = ", ".join(f"{name} {s[key]}" for key, name in (
        ("mode", "mode"), ("repeats", "repeats"), ("new_tokens", "new tokens"), ("prompt_tokens", "prompt tokens"),
        ("prompt_lengths", "prompt lengths"), ("batch_size", "batch"), ("experiment", "experiment"))
        if s.get(key) is not None)
    versions = ", ".join(f"{name} {version}" for name, version in entry.versions.items() if version)
    lines = [f"#{entry.id} {entry.kind}" + (f" ({s['report_kind']} report)" if entry.kind == "imported" else "")
             + f", created {entry.created}, saved {entry.saved}" + (", cancelled" if s.get("cancelled") else ""),
             f"preset {entry.preset or tables.DASH}; device {entry.device or tables.DASH}; driver "
             f"{entry.driver or tables.DASH}",
             f"versions: {versions or tables.DASH}",
             f"commit {entry.git_commit or tables.DASH}; host {entry.host or tables.DASH}",
             f"settings: {asked or tables.DASH}; variants {', '.join(s.get('variants') or []) or tables.DASH}"]
    if entry.source:
        lines.append(f"source: {entry.source}")
    results = entry.report["results"]
    with_cells = any(cell_label(r) for r in results)
    scored = quality_table.shown(results)
    rows = [["variant"] + ["cell"] * with_cells + ["status", "TTFT ms", "TPOT ms", "min-max ms", "tok/s",
                                                   "peak memory"] + [*quality_table.HEADERS, "PPL"] * scored]
    for r in results:
        rows.append([r["variant"]] + [cell_label(r) or tables.DASH] * with_cells
                    + [r["status"], tables.ms(r.get("ttft_s"), 2), tables.ms(r.get("tpot_s"), 2),
                       tables.ms_range(r.get("tpot_min_s"), r.get("tpot_max_s")), tables.fixed(r.get("tokens_per_s")),
                       tables.size(r.get("peak_memory_bytes"))]
                    + (quality_table.cells(r.get("quality")) + quality_table.perplexity_cells(r.get("quality"))[:1])
                    * scored)
    lines += tables.fixed_width(rows).splitlines()
    lines += [f"  {note}" for note in quality_table.notes(results)]
    judged = entry.report.get("comparison") or {}
    if judged.get("text"):
        lines.append(f"verdict: {judged['text']}")
    return "\n".join(lines)


def quality_text(entry: Entry) -> str:
    """A saved run's quality in a list cell: each scored variant's same-top-token share and mean KLD
    ("bnb-8bit 99%/0.00213, bnb-4bit 94%/0.0412"); else the reference's perplexity, or why there are
    no figures ("not meaningful"); a dash for a run saved without any."""
    found = entry.quality
    measured = [f"{variant} {quality_table.agreement(q['top_token_agreement'])}/{quality_table.kld(q['kld_mean'])}"
                for variant, q in found.items() if q["status"] == "measured"]
    if measured:
        return ", ".join(measured)
    reference = next((q for q in found.values() if q["status"] == "reference" and q.get("perplexity")), None)
    if reference is not None:
        return f"reference only: PPL {reference['perplexity']:.2f}"
    return ", ".join(dict.fromkeys(q["status"] for q in found.values())) or tables.DASH


def list_table(entries: list[Entry]) -> str:
    """Saved runs, one line each; the last column their quality figures (`quality_text`)."""
    rows = [("id", "created", "kind", "preset", "device", "variants", "mode", "repeats", "prompt", "commit",
             "quality (same top/mean KLD)")]
    for e in entries:
        s = e.settings
        prompt = s.get("prompt_tokens") or ",".join(map(str, s.get("prompt_lengths") or [])) or None
        rows.append((str(e.id), e.created, e.kind, e.preset or tables.DASH, e.device or tables.DASH,
                     ",".join(s.get("variants") or []) or tables.DASH, tables.general(s.get("mode")),
                     tables.general(s.get("repeats")), tables.general(prompt),
                     (e.git_commit or tables.DASH)[:10], quality_text(e)))
    return tables.fixed_width(rows)
