"""Saved runs side by side: each row's (variant and cell) TTFT, TPOT, tokens/s and peak memory in every
run, its change from the reference run in percent, and whether that change is beyond the runs' own
spread (engine/verdict.py's noise rule); then its quality figures (engine/quality.py: top-token
agreement, KLD, perplexity), each scored once per run, so stated with no range to judge them by.
engine/views/history_tables.py and history_charts.py show it; the runs come from engine/history.py or
from report files.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine import quality, verdict
from engine.errors import InputError

# quality figures compared across runs: Change.metric -> the key in a row's quality entry (engine/quality.py)
QUALITY_FIGURES = {"agreement": "top_token_agreement", "kld_mean": "kld_mean", "kld_p99": "kld_p99",
                   "kld_max": "kld_max", "perplexity": "perplexity"}

@dataclass(frozen=True)
class Change:
    """One figure of one row (variant and cell) in every compared run, against the reference run."""
    variant: str
    cell: str                              # "" in a plain run, "prompt 128" in a bench or sweep cell
    metric: str                            # a verdict.Metric name (tpot, ttft, tokens_per_s, memory) or a
                                           # QUALITY_FIGURES name (agreement, kld_mean, kld_p99, kld_max, perplexity)
    values: tuple                          # each run's median (None where it has no answer), in the order given
    percent: tuple                         # (value / reference's - 1) x 100; None for the reference and where missing
    verdicts: tuple                        # verdict.compare's word for each run against the reference: better,
                                           # worse, within noise, no range (one repeat, and every quality
                                           # figure: scored once); None as above

    @property
    def within_noise(self) -> tuple:
        """For each run: True when its difference from the reference is within the runs' spread."""
        return tuple(None if word is None else word == verdict.NOISE for word in self.verdicts)


@dataclass(frozen=True)
class Compared:
    """Several runs side by side."""
    reference: int                         # the index of the reference run
    changes: list                          # Change, by row (in order of first appearance) then figure
    differs: dict                          # settings that are not the same in every run: name -> each run's value
    left_out: dict                         # run index -> [(variant, cell)]: its rows that no other run has
                                           # (the reference's) or that the reference has not (the others')


def cell_label(row: dict) -> str:
    """The cell a row measures, as matched across runs: "" for a plain run, "prompt 128", "prompt 512, batch 4"."""
    if "cell" not in row:
        return ""
    parts = [f"prompt {row['prompt_length']}"] if row.get("prompt_length") else []
    if row.get("batch_size") not in (None, 1):
        parts.append(f"batch {row['batch_size']}")
    if row.get("pad_ratio"):
        parts.append(f"pad {row['pad_ratio']:g}")
    if row.get("max_new_tokens"):
        parts.append(f"new {row['max_new_tokens']}")
    return ", ".join(parts) or f"cell {row['cell']}"


COMPARED_SETTINGS = {"preset": lambda r: r["preset"].get("name"), "device": lambda r: r["device"].get("name"),
                     "prompt tokens": lambda r: r.get("prompt_tokens"), "mode": lambda r: r.get("mode"),
                     "repeats": lambda r: r.get("repeats"), "batch size": lambda r: r.get("batch_size"),
                     # torch's CPU threads per worker: on a CPU they set the pace as much as the variant
                     "CPU threads": lambda r: sorted({row.get("cpu_threads") for row in r["results"]
                                                      if row.get("cpu_threads") is not None}) or None,
                     "torch": lambda r: (r.get("versions") or {}).get("torch"),
                     "transformers": lambda r: (r.get("versions") or {}).get("transformers")}


def compare(reports: list[dict], reference_index: int = 0) -> Compared:
    """Each row's TTFT, TPOT, tokens/s and peak memory in every run, its difference from the reference run
    in percent, and whether that difference is beyond the runs' own spread (engine/verdict.py's rule: the
    min-max ranges over repeats do not overlap; memory within 1% is the same); then each quality figure
    that some run measured for the row, its difference in percent, "no range" (`quality_changes`)."""
    if len(reports) < 2:
        raise InputError("compare needs two runs or more")
    if not 0 <= reference_index < len(reports):
        raise InputError(f"the reference must be one of the {len(reports)} runs compared")
    keyed = [{(row["variant"], cell_label(row)): row for row in report["results"]} for report in reports]
    base = keyed[reference_index]
    shared = [key for key in base if any(key in rows for i, rows in enumerate(keyed) if i != reference_index)]
    changes = []
    for key in shared:
        ref_row = base[key]
        for metric in verdict.METRICS:
            values, percent, words = [], [], []
            for index, rows in enumerate(keyed):
                row = rows.get(key)
                value = row.get(metric.field) if row is not None and verdict.answered(row) else None
                values.append(value)
                if index == reference_index or value is None or not verdict.answered(ref_row):
                    percent.append(None)
                    words.append(None)
                    continue
                reference = ref_row.get(metric.field)
                percent.append((value / reference - 1) * 100 if reference else None)
                found = verdict.compare(row, ref_row, metric)
                words.append(found.verdict if found is not None else None)
            changes.append(Change(key[0], key[1], metric.name, tuple(values), tuple(percent), tuple(words)))
        changes += quality_changes(key, [rows.get(key) for rows in keyed], reference_index)
    differs = {}
    for name, read in COMPARED_SETTINGS.items():
        seen = [read(report) for report in reports]
        if len(set(map(str, seen))) > 1:
            differs[name] = seen
    left_out = {index: [key for key in rows if key not in (shared if index == reference_index else base)]
                for index, rows in enumerate(keyed)}
    return Compared(reference_index, changes, differs, {index: keys for index, keys in left_out.items() if keys})


def quality_changes(key: tuple[str, str], rows: list, reference_index: int) -> list[Change]:
    """A row's quality figures in every run (`rows`: the row in each run, None where it has none), for each
    figure that one run at least measured. A run's variant scores the reference variant's answer once, off
    the clock: the change is stated with no range (verdict.NO_RANGE), never called better or worse."""
    entries = [row.get("quality") if row is not None and quality.has_figures(row.get("quality")) else None
               for row in rows]
    changes = []
    for name, field in QUALITY_FIGURES.items():
        # the reference variant scored its own answer: of its figures only the perplexity says anything
        values = tuple(entry.get(field) if entry and (entry["status"] == "measured" or field == "perplexity")
                       else None for entry in entries)
        if all(value is None for value in values):
            continue
        reference = values[reference_index]
        percent = tuple(None if index == reference_index or value is None or not reference
                        else (value / reference - 1) * 100 for index, value in enumerate(values))
        words = tuple(None if index == reference_index or value is None or reference is None else verdict.NO_RANGE
                      for index, value in enumerate(values))
        changes.append(Change(key[0], key[1], name, values, percent, words))
    return changes
