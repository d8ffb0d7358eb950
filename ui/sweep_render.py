"""The Experiments tab's HTML, pure: a sweep's paragraph, its progress line and its standalone page.
No gradio, no files; every outside text escaped with ui/render.py's `e`.
"""
from __future__ import annotations

from engine.studies import sweeps
from ui.render import e, message_html

TREND_LOOK = {True: ("agrees", "#16a34a", "The run agrees"), False: ("contradicts", "#d97706", "The run disagrees"),
              None: ("noise", "#9ca3af", "Within noise")}


def trends_html(sweep: dict | None) -> str:
    """What a finished sweep showed of each claim of its paragraph: the verdict, the note, the figures."""
    parts = []
    for found in (sweep or {}).get("trends", []):
        kind, colour, word = TREND_LOOK[found["agrees"]]
        parts.append(f'<div class="exp-trend" data-agrees="{kind}" style="border-left: 3px solid {colour}; '
                     f'padding: 2px 0 2px 8px; margin: 0 0 8px"><p><b>{word}:</b> {e(found["note"])}</p>'
                     f'<div class="exp-plan">Measured: {e(found["measured"])}</div></div>')
    return "".join(parts)


def explanation_html(name: str, quick: bool, sweep: dict | None = None) -> str:
    """The experiment's paragraph (what its chart shows and why) and the grid it measures; after a sweep
    (`sweep`, finished), what it showed of the paragraph's claims."""
    experiment = sweeps.get(name)
    cells, repeats = len(experiment.grid(quick)), sweeps.repeats_for(quick)
    plan = (f"{'Quick' if quick else 'Full'} grid: {cells} cells per variant (those beyond the preset's context "
            f"are left out), {repeats} measured "
            f"request{'s' if repeats > 1 else ''} per cell{' (the median is kept)' if repeats > 1 else ''}, "
            "each cell after one warm-up request. Fair mode: one variant on the device at a time.")
    return (f'<div class="exp-explain" data-experiment="{e(name)}"><div class="exp-kicker">What the chart shows, '
            f'and why</div><div class="exp-title">{e(experiment.title)}</div><p>{e(experiment.explanation)}</p>'
            f'{trends_html(sweep)}<div class="exp-plan">{e(plan)}</div></div>')


def _sweep_done_message(live, device: str) -> tuple[str, str]:
    sweep, rows = live.result, live.result["results"]
    ok = sum(row["status"] == "ok" for row in rows)
    problems = list(dict.fromkeys(f"{e(row['variant'])}: {e(row['reason'])}" for row in rows
                                  if row["status"] in ("failed", "unavailable") and row["reason"]))
    text = (f"{'Stopped' if sweep['cancelled'] else 'Done'}: {live.experiment.name}, {ok} of {len(rows)} "
            f"(variant, cell) pairs measured in {sweep['wall_s']:.1f} s on {e(device)}.")
    busy = sweeps.host_busy_note(rows, "rerun with less running beside the dashboard")
    if busy:
        problems.append(e(busy) + " (marked CPU busy in the table)")
    if any(found["agrees"] is False for found in sweep.get("trends", [])):
        problems.append("On this run the chart contradicts the paragraph beside it: its note says where")
    text += "".join(f"<br>{problem}" for problem in problems)
    return text, "warn" if problems or sweep["cancelled"] else "ok"


def sweep_message(live, device: str, stopping: bool, elapsed_s: float) -> str:
    """The status line of a sweep (a sweeps.LiveSweep), with its progress bar (measured requests / all)."""
    share = live.settled / live.total if live.total else 1.0
    if live.done:
        text, kind = _sweep_done_message(live, device)
    elif stopping:
        text, kind = "Stopping: the sweep ends after the current request's next token.", "warn"
    else:
        loading = [variant for variant, stage in live.stages.items() if stage in ("loading", "warming")]
        doing = f"loading and warming up {', '.join(loading)}" if loading else "measuring"
        text, kind = (f"Running {live.experiment.name}: {live.settled} of {live.total} measurements ({share:.0%}); "
                      f"{e(doing)} ({elapsed_s:.0f} s)."), "info"
    bar = (f'<div class="exp-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
           f'aria-valuenow="{share * 100:.0f}" data-progress="{share:.4f}"><div style="width:{share * 100:.1f}%">'
           '</div></div>')
    return message_html(text + bar, kind)


NO_LIBRARY = ("The chart needs the charting library plotly.min.js in the folder of this file. Copy it there "
              "from a Python with plotly installed (python -c \"import plotly, os; print(os.path.join(os.path.dirname("
              "plotly.__file__), 'package_data', 'plotly.min.js'))\" prints where it is), then reload this page.")


def sweep_page(sweep: dict, figure_html: str) -> str:
    """A page of a sweep's chart. `figure_html` loads plotly from beside the page (Downloads.library: one
    copy for every chart, not 4.6 MB in each); where it is missing the page says how to get it."""
    where = f"{sweep['preset']['title']} on {sweep['device'].get('name', '?')}"
    noise = " Random weights: the timings are real, any text is noise." if sweep["preset"]["random_weights"] else ""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{e(sweep["title"])}</title></head>'
            '<body style="font-family: system-ui, sans-serif; max-width: 1200px; margin: 24px auto; color: #1f2937">'
            f'<h2>{e(sweep["title"])}</h2><p>{e(sweep["explanation"])}</p>{trends_html(sweep)}'
            f'<p style="color: #6b7280">{e(where)}; {"quick" if sweep["quick"] else "full"} grid.{e(noise)}</p>'
            f'{figure_html}<p id="no-library" hidden style="color: #b91c1c">{e(NO_LIBRARY)}</p>'
            '<script>if (!window.Plotly) document.getElementById("no-library").hidden = false;</script>'
            '</body></html>')
