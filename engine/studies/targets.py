"""The GPU work's targets (engine overhead, compiled MBU, repeatability, every variant accounted for,
wall time), judged on a GPU check's summary: each with its measured value and whether it is met."""
from __future__ import annotations

from engine.report import tpot_spread

OVERHEAD_MIN, OVERHEAD_MAX, COMPILED_MBU_MIN, SPREAD_MAX = 0.98, 1.02, 0.75, 0.05
INT4_TPOT_MAX = 0.55          # int4's TPOT over compiled bf16's on the 8B shape (gpt-fast: 104.9 / 196.8 tok/s)
WALL_S_MAX = {"full": 480.0, "quick": 240.0}


def check_targets(summary: dict, quick: bool) -> list[dict]:
    """The GPU work's targets, each with the measured value and whether it is met."""
    checks = []

    def check(target: str, value, met: bool, detail: str = "") -> None:
        checks.append({"target": target, "value": value, "met": bool(met), "detail": detail})

    for report in summary["runs"]:
        if "results" not in report:               # a preset that failed or was skipped meets nothing
            check(f"{report['preset']}: measured", None, False, report.get("error") or report.get("skipped"))
            continue
        name, rows = report["preset"]["name"], report["results"]
        ratio = report.get("overhead_ratio")
        # the engine adds work to the bare loop: well below 1, the two were not timed alike
        check(f"{name}: worker TPOT / bare-loop TPOT <= {OVERHEAD_MAX}", ratio,
              ratio is not None and OVERHEAD_MIN <= ratio <= OVERHEAD_MAX,
              f"below {OVERHEAD_MIN}: the bare loop ran slower than the engine's path, the comparison is broken"
              if ratio is not None and ratio < OVERHEAD_MIN else "")
        if name == "llama-3.1-8b-random":
            for row in rows:
                if row["variant"] == "compiled":
                    mbu = row.get("mbu_measured")
                    check(f"{name}: compiled, prompt {row['prompt_length']}, MBU vs measured copy >= "
                          f"{COMPILED_MBU_MIN:.0%}", mbu, mbu is not None and mbu >= COMPILED_MBU_MIN)
            if any(r["variant"] == "int4" for r in rows):
                by = {(r["variant"], r["prompt_length"]): r for r in rows if r["status"] == "ok" and r.get("tpot_s")}
                int4, compiled = by.get(("int4", 128)), by.get(("compiled", 128))
                ratio = int4["tpot_s"] / compiled["tpot_s"] if int4 and compiled else None
                check(f"{name}: int4 TPOT / compiled TPOT at prompt 128 <= {INT4_TPOT_MAX}", ratio,
                      ratio is not None and ratio <= INT4_TPOT_MAX,
                      "" if ratio is not None else "int4 or compiled did not answer at prompt 128")
        spreads = {f"{r['variant']}@{r['prompt_length']}": tpot_spread(r)
                   for r in rows if r["status"] == "ok" and tpot_spread(r) is not None}
        if spreads:
            over = {cell: spread for cell, spread in spreads.items() if spread > SPREAD_MAX}
            busy = {f"{r['variant']}@{r['prompt_length']}" for r in rows if r.get("host_busy")}
            check(f"{name}: TPOT spread (max / min - 1 over repeats) <= {SPREAD_MAX:.0%} in every cell",
                  max(spreads.values()), not over,
                  ", ".join(f"{c} {v:.0%}" + (" (CPU busy)" if c in busy else "") for c, v in over.items()))
        broken = sorted({r["variant"] for r in rows if r["status"] not in ("ok", "unavailable") or
                         (r["status"] == "unavailable" and not r["reason"])})
        check(f"{name}: every variant runs, or is unavailable with its reason", len(broken), not broken,
              ", ".join(broken))
    limit = WALL_S_MAX["quick" if quick else "full"]
    check(f"wall time <= {limit:.0f} s", summary["wall_s"], summary["wall_s"] <= limit)
    return checks


def shown(value) -> str:
    """A target's measured value as the check prints it."""
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def target_lines(checks: list[dict], cuda: bool) -> list[str]:
    header = "targets:" if cuda else "targets (set for a GPU: on a CPU this only exercises the check):"
    return [header] + [f"  [{'met' if c['met'] else 'NOT MET'}] {c['target']}: {shown(c['value'])}"
                           + (f" ({c['detail']})" if c["detail"] else "") for c in checks]
