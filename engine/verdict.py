"""Which variant wins each figure, by how much, and whether the measurement supports saying so.

Every figure of a variant that answered has one value per timed repeat (the report's `*_repeats`
lists). Two variants differ in a figure only when the ranges of their repeats (min-max) do not
overlap; then the ratio of their medians is stated with the range of ratios that the repeats allow
(for a time: the reference's slowest over the variant's fastest, and the other way round), which
then lies wholly on one side of 1. When the ranges overlap the difference is "within noise"; with a
single repeat there is no range and nothing is called. Peak memory differing by under 1% is no
difference (resident memory moves by a few pages between requests). A row slowed by other processes on the CPU
(`host_busy`) is named beside every comparison it enters: a slowed reference inflates every gain.
The verdict then says what each winner costs: its memory and time per token against the reference,
and how its answers differ from the reference's (engine/quality.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from engine import quality
from engine.variants import REFERENCE

BETTER, WORSE, NOISE, NO_RANGE = "better", "worse", "within noise", "no range"


@dataclass(frozen=True)
class Metric:
    """One figure that variants are compared on."""
    name: str
    field: str                # the row's median
    repeats_field: str        # the row's value per timed repeat
    lower_is_better: bool
    ratio: str                # what the stated ratio is: "speedup", "ratio" or "share"
    title: str                # how the summary's and the cards' marks name the winner
    floor: float = 0.0        # a ratio within this of 1 is no difference, however tight the ranges

    def stated(self, row: float, base: float) -> float:
        """The ratio said of `row` against `base`: a speedup for times (above 1: faster), the share of the
        reference's value for tokens/s and memory."""
        return base / row if self.ratio == "speedup" else row / base


METRICS = (
    Metric("tpot", "tpot_s", "tpot_repeats_s", True, "speedup", "fastest per token"),
    Metric("ttft", "ttft_s", "ttft_repeats_s", True, "speedup", "fastest first token"),
    Metric("tokens_per_s", "tokens_per_s", "tokens_per_s_repeats", False, "ratio", "most tokens/s"),
    # a process's resident memory moves by a few pages from one request to the next: under 1% is no gain
    Metric("memory", "peak_memory_bytes", "peak_memory_repeats_bytes", True, "share", "least memory", 0.01),
)
BY_NAME = {metric.name: metric for metric in METRICS}


@dataclass(frozen=True)
class Comparison:
    """`row` against `base` in one figure."""
    ratio: float              # Metric.stated of the medians
    low: float | None         # the stated ratio's range over the repeats (None with one repeat)
    high: float | None
    verdict: str              # BETTER, WORSE, NOISE or NO_RANGE, for `row`

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "low": self.low, "high": self.high, "verdict": self.verdict}


def values(row: dict, metric: Metric) -> list[float]:
    """The row's value of the figure in each timed repeat (one, its median, when it has no list)."""
    found = [v for v in row.get(metric.repeats_field) or [] if v is not None]
    if not found and row.get(metric.field) is not None:
        found = [row[metric.field]]
    return found


def answered(row: dict) -> bool:
    return row.get("status") == "ok" and bool(row.get("output_tokens"))


def compare(row: dict, base: dict, metric: Metric) -> Comparison | None:
    """`row` against `base` in `metric`; None when either lacks the figure."""
    mine, theirs = values(row, metric), values(base, metric)
    median_mine, median_theirs = row.get(metric.field), base.get(metric.field)
    if not mine or not theirs or not median_mine or not median_theirs or min(mine + theirs) <= 0:
        return None
    ratio = metric.stated(median_mine, median_theirs)
    if len(mine) < 2 or len(theirs) < 2:
        return Comparison(ratio, None, None, NO_RANGE)
    # the ratio's extremes over the repeats: best of one against worst of the other, both ways
    ends = sorted((metric.stated(min(mine), max(theirs)), metric.stated(max(mine), min(theirs))))
    low, high = ends
    if abs(ratio - 1) < metric.floor:
        verdict = NOISE
    elif low > 1:
        verdict = WORSE if metric.ratio == "share" else BETTER
    elif high < 1:
        verdict = BETTER if metric.ratio == "share" else WORSE
    else:
        verdict = NOISE
    return Comparison(ratio, low, high, verdict)


def slowed(*rows: dict) -> list[str]:
    """The named rows that other processes slowed while they were timed."""
    return [row["variant"] for row in rows if row.get("host_busy")]


DIRECTIONS = {"speedup": ("faster", "slower"), "ratio": ("more", "fewer"), "share": ("more", "less")}


def _percent(share: float) -> str:
    return f"{share:.1%}" if share < 0.1 else f"{share:.0%}"


def directed(metric: Metric, comparison: Comparison, with_range: bool = True, word: str = "range ") -> str:
    """A ratio with its direction in words, so that nobody has to know which way the ratio is taken: "1.12x faster
    (range 1.11-1.14x)", "1.54x slower", "48% less (range 46-50%)", "14% more". A time or a count is said as a
    factor of at least 1 (a speedup of 0.65 is 1.54x slower), a memory share as the difference in percent;
    `word` before the range ("" in a table cell)."""
    text, span = directed_parts(metric, comparison)
    return f"{text} ({word}{span})" if with_range and span else text


def directed_parts(metric: Metric, comparison: Comparison) -> tuple[str, str]:
    """`directed`'s two parts: the ratio with its direction, and its range over the repeats ("" without one)."""
    up, down = DIRECTIONS[metric.ratio]
    ratio, ends = comparison.ratio, (comparison.low, comparison.high)
    if metric.ratio == "share":
        if round(abs(ratio - 1), 3) == 0:               # "0.0% less" would say a direction it has not
            return "the same", ""
        differ = (lambda share: share - 1) if ratio > 1 else (lambda share: 1 - share)
        text = f"{_percent(differ(ratio))} {up if ratio > 1 else down}"
        low, high = sorted(differ(end) for end in ends) if ends[0] is not None else (None, None)
        span = f"{_percent(low).rstrip('%')}-{_percent(high)}" if low is not None else ""
    else:
        factor = (lambda value: value) if ratio >= 1 else (lambda value: 1 / value)
        text = f"{factor(ratio):.2f}x {up if ratio >= 1 else down}"
        low, high = sorted(factor(end) for end in ends) if ends[0] is not None else (None, None)
        span = f"{low:.2f}-{high:.2f}x" if low is not None else ""
    if span and len(set(span.rstrip("x%").split("-"))) == 1:     # every repeat gave the same, to this precision
        span = ""
    return text, span


def leaders(rows: list[dict], metric: Metric) -> list[str]:
    """The variants that win `metric`: of those measurably better than the reference, the one with
    the best median, then those within noise of it (tied). Empty when none beats the reference, or
    when there is no range to judge by."""
    base = next((row for row in rows if row["variant"] == REFERENCE and answered(row)), None)
    if base is None:
        return []
    better = [row for row in rows if row is not base and answered(row)
              and (found := compare(row, base, metric)) is not None and found.verdict == BETTER]
    if not better:
        return []
    sign = 1 if metric.lower_is_better else -1
    best = min(better, key=lambda row: sign * row[metric.field])
    return [best["variant"]] + [row["variant"] for row in better if row is not best
                                and compare(row, best, metric).verdict == NOISE]


HEADS = {"tpot": "per token", "ttft": "first token", "tokens_per_s": "tokens/s", "memory": "memory"}
NOTHING_BETTER = {"tpot": "none faster than {ref} beyond the noise", "ttft": "none sooner than {ref} beyond the noise",
                  "tokens_per_s": "none above {ref}'s beyond the noise",
                  "memory": "none uses less than {ref} beyond the noise"}


def metric_line(rows: list[dict], metric: Metric, base: dict) -> str:
    """One clause on `metric`: who beats the reference and by how much, or that nobody does, and which better
    medians are not called because they are within noise; empty without ranges to judge by."""
    ref = base["variant"]
    by_name = {row["variant"]: row for row in rows}
    judged = [c for row in rows if row is not base and answered(row)
              and (c := compare(row, base, metric)) is not None]
    if not judged or any(c.verdict == NO_RANGE for c in judged):
        return ""
    won = leaders(rows, metric)
    if not won:
        nobody = NOTHING_BETTER[metric.name].format(ref=ref)
        return f"{HEADS[metric.name]}: {nobody}" + noise_note(rows, metric, base, won)
    comparison = compare(by_name[won[0]], base, metric)
    said, span = directed_parts(metric, comparison)
    text = f"{won[0]} {said} than {ref}" + (f" (range {span})" if span else "")
    if len(won) > 1:
        text += f", tied within noise with {', '.join(won[1:])}"
    return f"{HEADS[metric.name]}: {text}" + noise_note(rows, metric, base, won)


def noise_names(rows: list[dict], metric: Metric, base: dict, won: list[str]) -> list[str]:
    """The variants whose median beats the winner's (or, with no winner, the reference's) while their range
    overlaps the reference's: a shorter bar that the verdict does not call."""
    sign = 1 if metric.lower_is_better else -1
    bar = next(row for row in rows if row["variant"] == won[0])[metric.field] if won else base[metric.field]
    return [row["variant"] for row in rows if row is not base and answered(row) and row["variant"] not in won
            and row.get(metric.field) is not None and sign * row[metric.field] < sign * bar
            and (c := compare(row, base, metric)) is not None and c.verdict == NOISE]


def noise_note(rows: list[dict], metric: Metric, base: dict, won: list[str]) -> str:
    """Why a better median is not called: " (sdpa's lower median is within noise of baseline)", so that the
    verdict never seems to contradict a shorter bar."""
    found = noise_names(rows, metric, base, won)
    if not found:
        return ""
    what = ("lower peak" if metric.name == "memory" else "lower median" if metric.lower_is_better
            else "higher median") + ("s" if len(found) > 1 else "")
    names = " and ".join(f"{name}'s" for name in found)
    return f" ({names} {what} {'are' if len(found) > 1 else 'is'} within noise of {base['variant']})"


def nothing_sentence(rows: list[dict], base: dict) -> str:
    """The verdict when no variant beats the reference in any figure: one clause, and which better medians (or
    peaks) it does not call because they are within noise."""
    ref = base["variant"]
    better: dict[str, list[str]] = {}
    for metric in METRICS:
        for name in noise_names(rows, metric, base, []):
            better.setdefault(name, []).append(HEADS[metric.name])
    text = f"no variant beats {ref} beyond the noise in time per token, first token, tokens/s or memory"
    if better:
        text += (" (better than " + ref + "'s but within noise, so not called: "
                 + "; ".join(f"{name}'s {', '.join(heads)}" for name, heads in better.items()) + ")")
    return text


SEPARATE = ("To tell them apart, run a longer prompt (on the page, the ~2k-token example): attention's share of the "
            "work grows with the prompt, while a short one leaves differences smaller than the noise.",
            "To tell them apart, ask for more new tokens: each repeat's time per token then averages over more "
            "steps, so that the ranges narrow.")
LONG_PROMPT = 1000            # prompt tokens from which a longer prompt is no longer the first thing to try


def separate_sentence(rows: list[dict], won: dict[str, list[str]]) -> str:
    """What would separate the variants when the run separated none in time (per token or first token), with
    ranges to judge by: one action, chosen from the run's own prompt length."""
    timed = [row for row in rows if answered(row)]
    if len(timed) < 2 or won.get("tpot") or won.get("ttft"):
        return ""
    if any(len(values(row, BY_NAME["tpot"])) < 2 for row in timed):        # no range: the Repeats advice instead
        return ""
    prompt = max((row.get("prompt_tokens") or 0 for row in timed), default=0)
    return SEPARATE[0] if prompt < LONG_PROMPT else SEPARATE[1]


def slowed_sentence(rows: list[dict], gains: bool = True) -> str:
    """Who other processes slowed while timed, said once after the verdict's clauses; that a slowed reference
    overstates the gains where there are `gains` to overstate."""
    busy = slowed(*(row for row in rows if answered(row)))
    if not busy:
        return ""
    text = f"Slowed by other processes on the CPU while timed: {', '.join(busy)}"
    if REFERENCE in busy and gains:
        text += f" ({REFERENCE} is the reference: every gain above is overstated)"
    return text + "; rerun with less running beside it."


def runtime_sentence(rows: list[dict], base: dict) -> str:
    """Rows that ran in another Python environment than the reference (engine/runtimes.py): not like with
    like, said once, so that a library version's difference is not read as the variant's."""
    other = [row for row in rows if row is not base and row.get("runtime") != base.get("runtime")]
    if not other:
        return ""
    def where(row: dict) -> str:
        return f"the {row['runtime']} runtime" if row.get("runtime") else "the app's own environment"
    named = ", ".join(f"{row['variant']} runs in {where(row)}" for row in other)
    return (f"Not like with like: {named}, {base['variant']} in {where(base)} (each label names its versions): "
            "their differences include the library versions', and on a CPU the memory of each process's libraries.")


def cost(row: dict, base: dict) -> str:
    """What a variant costs against the reference: "48% less memory, 1.10x slower per token, same top
    token on 94%, mean KLD 0.04"; memory and speed within noise say so, answers without figures say why."""
    ref, parts = base["variant"], []
    memory = compare(row, base, BY_NAME["memory"])
    if memory is not None:
        parts.append(f"{ref}'s memory within noise" if memory.verdict == NOISE
                     else f"{directed(BY_NAME['memory'], memory, with_range=False)} memory")
    speed = compare(row, base, BY_NAME["tpot"])
    if speed is not None:
        parts.append(f"per token within noise of {ref}" if speed.verdict == NOISE
                     else f"{directed(BY_NAME['tpot'], speed, with_range=False)} per token")
    entry = row.get("quality")
    answers = quality.cost(entry)
    if not answers and entry and entry.get("note"):     # "not meaningful: random weights", "not reported by ..."
        answers = f"quality {entry['note']}"
    return ", ".join(parts + [answers] if answers else parts)


def costs_sentence(rows: list[dict], won: dict[str, list[str]], base: dict) -> str:
    """What each variant the verdict names as a winner costs, said once per variant."""
    by_name = {row["variant"]: row for row in rows}
    names = list(dict.fromkeys(name for metric in METRICS for name in won.get(metric.name) or []))
    found = [(name, cost(by_name[name], base)) for name in names if name in by_name]
    found = [f"{name}: {text}" for name, text in found if text]
    return f"What each winner costs: {'; '.join(found)}." if found else ""


def judge(results: list[dict]) -> dict:
    """The run's comparisons: each answered row against the reference (also stored on the row as
    `vs_reference`), the winners of every figure, and the verdict in one line."""
    base = next((row for row in results if row["variant"] == REFERENCE and answered(row)), None)
    rows = [row for row in results if answered(row)]
    if base is None:
        return {"reference": REFERENCE, "leaders": {}, "lines": {}, "slowed": slowed(*rows),
                "text": (f"No answer from {REFERENCE}, the reference, in this run: include it to compare the "
                         "variants against it." if len(results) > 1 else "")}
    for row in rows:
        if row is base:
            continue
        found = {metric.name: compare(row, base, metric) for metric in METRICS}
        row["vs_reference"] = {**{name: c.as_dict() for name, c in found.items() if c is not None},
                               "slowed_by_others": slowed(row, base)}
    lines = {metric.name: metric_line(results, metric, base) for metric in METRICS}
    won = {metric.name: leaders(results, metric) for metric in METRICS}
    text = "; ".join(line for line in lines.values() if line)
    if all(lines.values()) and not any(won.values()):          # nobody won anything: said once, not per figure
        text = nothing_sentence(rows, base)
    if not text and len(rows) > 1:
        text = ("One timed request each: no range to judge a difference by. Set Repeats to 3 or more"
                if any(len(values(row, BY_NAME["tpot"])) < 2 for row in rows) else "")
    costs = {row["variant"]: cost(row, base) for row in rows if row is not base}
    text = " ".join(part for part in (text + "." if text else "", costs_sentence(results, won, base),
                                      runtime_sentence(rows, base), slowed_sentence(rows, any(won.values())),
                                      separate_sentence(rows, won)) if part)
    return {"reference": REFERENCE, "leaders": won, "lines": lines, "costs": costs, "slowed": slowed(*rows),
            "text": text}


def marks(judgement: dict, variant: str) -> list[str]:
    """The titles a variant won ("fastest per token", ...), "tied" where others share them."""
    found = []
    for metric in METRICS:
        won = judgement.get("leaders", {}).get(metric.name) or []
        if variant in won:
            found.append(metric.title + (" (tied)" if len(won) > 1 else ""))
    return found
