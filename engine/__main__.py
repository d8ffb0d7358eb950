"""Command line: `python -m engine run ...` (the same engine as the dashboard)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from engine import events, history_cli, presets, quality_table, remote, runtimes, slo, telemetry, topology
from engine.errors import USER_ERRORS, InputError
from engine.launch import ENGINE_HELP, ENGINE_METAVAR
from engine.pool import Engine
from engine.spec import RunSpec, validate
from engine.report import host_note
from engine.studies.bench import run_bench, table as bench_table
from engine.studies.sweeps import EXPERIMENTS, run_sweep, summary, to_csv
from engine.views import tables
from engine.views.summary import report_csv, tpot_text, versus
from engine.views.sweep_charts import sweep_figure

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
THREADS_HELP = ("torch CPU threads per worker (default: one per core, or all cores but one when other processes "
                "keep the machine busy at the start, as the dashboard leaves one to the page)")
BUSY_CORES = 0.5        # cores other processes keep busy, over a look at the start, from which a worker gets one less
LOOK_S = 0.5            # how long that look is


def spare_cores(args) -> int:
    """Cores to leave to other work, as the dashboard leaves one to the page: 1 when no --threads was given and
    other processes kept at least BUSY_CORES of this process's cores busy over LOOK_S (a decode step that needs
    every core stalls whenever one is taken from it), saying so; else 0. The engine applies it on a CPU only."""
    cores = topology.usable_cores()
    if getattr(args, "threads", None) is not None or len(cores) < 2:
        return 0
    with telemetry.HostLoad(cores) as host:
        time.sleep(LOOK_S)
    if (host.others_cores or 0.0) < BUSY_CORES:
        return 0
    print(f"the machine is busy: other processes kept {host.others_cores:.1f} of its {len(cores)} cores busy, so "
          f"on a CPU each worker computes on {len(cores) - 1}, one core left spare as the dashboard does "
          "(--threads N to choose)", file=sys.stderr)
    return 1


def table(report: dict) -> str:
    """The results as a fixed-width table, one row per variant; with the quality figures when the report has
    them (engine/quality_table.py), and why a variant has none below."""
    scored = quality_table.shown(report["results"])
    rows = [("variant", "status", "tokens", "TTFT ms", "TPOT ms", "vs ref", "tok/s", "peak memory", "weights",
             "MBU", "diff@", "placement", "warm-up ms") + quality_table.HEADERS * scored]
    for r in report["results"]:
        warmups = r.get("warmup_e2e_s") or []         # E2E of the untimed first request(s), apart from the figures
        rows.append((r["variant"], r["status"], tables.general(r["output_tokens"] or None), tables.ms(r["ttft_s"]),
                     tpot_text(r, 1), versus(r, "tpot"), tables.fixed(r["tokens_per_s"]),
                     tables.size(r["peak_memory_bytes"]), tables.size(r["weights_bytes"]), tables.percent(r["mbu"]),
                     tables.general(r["first_diff_token"]), r["placement"] or tables.DASH,
                     ", ".join(tables.ms(w) for w in warmups) or tables.DASH,
                     *(quality_table.cells(r.get("quality")) if scored else ())))
    lines = tables.fixed_width(rows).splitlines()
    for r in report["results"]:
        for note in (r["reason"], host_note(r)):
            if note:
                lines.append(f"  {r['variant']}: {note}")
    lines += [f"  {note}" for note in quality_table.notes(report["results"])]
    judged = report.get("comparison") or {}
    if judged.get("text"):
        lines.append(f"verdict: {judged['text']}")
    return "\n".join(lines + slo.lines(report))


def targeted(args, report: dict) -> dict:
    """The report with each result judged against --slo, when it was given."""
    return slo.apply(report, args.slo) if getattr(args, "slo", None) else report


def _targets(text: str) -> slo.Targets:
    try:
        return slo.Targets.parse(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def load_preset(args):
    """--preset, with the served endpoints of --remote and the engines of --engine added to it
    (engine/remote.py, engine/launch.py); and the variants to run: --variants, else the preset's and
    those endpoints."""
    preset = presets.load(args.preset, allow_path=True)
    try:
        added = (tuple(remote.from_flag(text) for text in getattr(args, "remote", None) or ()) +
                 tuple(remote.engine_from_flag(text) for text in getattr(args, "engine", None) or ()))
    except ValueError as error:
        raise InputError(str(error)) from None
    taken = {e.name for e in preset.remote}
    clash = next((e.name for e in added if e.name in taken or [a.name for a in added].count(e.name) > 1), None)
    if clash:
        raise InputError(f"--remote/--engine: the name {clash!r} is taken: give each its own name=...")
    preset = dataclasses.replace(preset, remote=preset.remote + added)
    default = ",".join([*preset.variants, *(e.name for e in added)])
    variants = [v.strip() for v in (args.variants or default).split(",") if v.strip()]
    return preset, variants


def cmd_run(args) -> int:
    preset, variants = load_preset(args)
    max_new = preset.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    spec = RunSpec(args.prompt, variants, max_new, args.mode, args.repeats, args.ignore_eos,
                   warmup_requests=args.warmups, live=False)
    validate(spec, preset)                # bad input is refused before the look at how busy the machine is
    with Engine(preset, request_timeout_s=args.timeout, threads=args.threads, spare_cores=spare_cores(args)) as engine:
        run = engine.start(spec)
        print(f"{preset.title} on {engine.device.name}; mode {args.mode}"
              + ("; random weights: the text is noise, the timings are real" if preset.random_weights else ""),
              file=sys.stderr)
        found = {}

        def handle(event) -> None:
            if isinstance(event, events.Loaded):
                print(f"  {event.variant}: loaded in {event.load_s:.1f} s, warmed up in {event.warmup_s:.1f} s",
                      file=sys.stderr)
            elif isinstance(event, (events.Failed, events.Unavailable)):
                print(f"  {event.variant}: {event.reason}", file=sys.stderr)
            elif isinstance(event, events.RunDone):
                found["report"] = event.report

        run.follow(handle, lambda: engine.cancel(run.id))     # Ctrl-C: stop, keep what was measured
        report = targeted(args, found["report"])
    print(table(report))
    write(args.json, json.dumps(report, indent=1))
    write(args.csv, report_csv(report))         # the Compare tab's download: quality entries as quality_* columns
    history_cli.keep(args, report, "run")
    return finish(report)


def check_inputs(args) -> None:
    """Before any work: the output paths (each in a writable folder, made when only it is missing, as `runs/` of
    the README's examples; no two the same), the prompt
    (valid text: a byte that is not UTF-8 arrives as an unpaired surrogate) and the timeout."""
    paths = [Path(p) for p in (getattr(args, name, None) for name in ("json", "csv", "html")) if p]
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) < len(resolved):
        raise InputError("two outputs share one path: give --json, --csv and --html different files")
    for path in paths:
        folder = path.resolve().parent
        if path.is_dir():
            raise InputError(f"{path} is a folder: give a file name to write to")
        if not folder.is_dir() and folder.parent.is_dir() and os.access(folder.parent, os.W_OK):
            folder.mkdir()
        if not folder.is_dir():
            raise InputError(f"cannot write {path}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise InputError(f"cannot write {path}: the folder {folder} is not writable")
    prompt = getattr(args, "prompt", None)
    if prompt is not None:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("the prompt is not valid UTF-8 text: pass it as UTF-8") from None
    timeout = getattr(args, "timeout", None)
    if timeout is not None and not timeout > 0:
        raise InputError(f"--timeout must be a positive number of seconds, got {timeout}")


def write(path: str | None, text: str) -> None:
    """Write `text` to `path` whole or not at all (a file beside it, then renamed over it)."""
    if not path:
        return
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(target)
    print(f"wrote {path}", file=sys.stderr)


def finish(report: dict) -> int:
    """The exit code: 130 after Ctrl-C (saying what was kept), 1 when a variant failed, else 0."""
    if report.get("cancelled"):
        print("interrupted: the results measured until then are shown" + (" and written" if any(
            r.get("output_tokens") for r in report["results"]) else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if all(r["status"] in ("ok", "unavailable") for r in report["results"]) else 1


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("prompt lengths must be positive integers, e.g. 128,2048")
    return values


def cmd_bench(args) -> int:
    preset, variants = load_preset(args)
    report = targeted(args, run_bench(preset, variants, args.prompt_lengths, args.new_tokens, args.repeats,
                                      args.batch_size, threads=args.threads, spare_cores=spare_cores(args)))
    print("\n".join([bench_table(report), *slo.lines(report)]))
    write(args.json, json.dumps(report, indent=1))
    history_cli.keep(args, report, "bench")
    return finish(report)


def cmd_sweep(args) -> int:
    args.preset = args.preset or EXPERIMENTS[args.name].preset       # the experiment's own unless told
    preset, _ = load_preset(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    sweep = run_sweep(args.name, preset, quick=args.quick, variants=variants, threads=args.threads,
                      spare_cores=spare_cores(args), progress=lambda line: print(line, file=sys.stderr, flush=True))
    sweep = targeted(args, sweep)
    print("\n".join([summary(sweep), *slo.lines(sweep)]))
    write(args.json, json.dumps(sweep, indent=1))
    write(args.csv, to_csv(sweep))
    if args.html:
        write(args.html, sweep_figure(sweep).to_html(include_plotlyjs=True))
    history_cli.keep(args, sweep, "sweep")
    return finish(sweep)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one prompt through several variants; prints a table, writes JSON")
    run.add_argument("--preset", default="tiny", help=f"one of: {', '.join(presets.available())}, or a .yaml path")
    run.add_argument("--variants", help="comma-separated, e.g. baseline,sdpa,bnb-4bit (default: the preset's)")
    run.add_argument("--prompt", default="Explain why attention is memory-bound during decoding.")
    run.add_argument("--max-new-tokens", type=int, help="default: the preset's")
    run.add_argument("--mode", choices=("fair", "race"), default="fair",
                     help="fair: one variant generates at a time; race: all at once (contended)")
    run.add_argument("--repeats", type=int, default=3,
                     help="timed requests per variant: medians and the TPOT range over them (default 3)")
    run.add_argument("--warmups", type=int, default=1,
                     help="untimed requests at the same lengths before the timed ones (default 1; their time is "
                          "shown apart)")
    run.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    run.add_argument("--timeout", type=float, default=900.0, help="seconds one request may take")
    run.add_argument("--threads", type=int, help=THREADS_HELP)
    run.add_argument("--json", help="write the report to this path")
    run.add_argument("--csv", help="write the results as CSV here, one row per variant (quality figures as "
                                   "quality_* columns)")
    run.set_defaults(func=cmd_run)
    bench = sub.add_parser("bench", help="every (variant, prompt length) cell in fair mode after a warm-up")
    bench.add_argument("--preset", default="tiny", help=f"one of: {', '.join(presets.available())}")
    bench.add_argument("--variants", help="comma-separated (default: the preset's)")
    bench.add_argument("--prompt-lengths", type=_int_list, default=[128, 2048], help="tokens, e.g. 128,2048")
    bench.add_argument("--new-tokens", type=int, default=128)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--batch-size", type=int, default=1)
    bench.add_argument("--threads", type=int, help=THREADS_HELP)
    bench.add_argument("--json", help="write the report to this path")
    bench.set_defaults(func=cmd_bench)
    sweep = sub.add_parser("sweep", help="an experiment over a grid: " + ", ".join(EXPERIMENTS) + "; a line per "
                           "cell as it is measured, then the table and the paragraph's claims against the rows")
    sweep.add_argument("name", choices=list(EXPERIMENTS))
    sweep.add_argument("--preset", help=f"one of: {', '.join(presets.available())} (default: the experiment's: "
                       + ", ".join(f"{e.name} {e.preset}" for e in EXPERIMENTS.values()) + ")")
    sweep.add_argument("--variants", help="comma-separated (default: the experiment's)")
    sweep.add_argument("--quick", action="store_true",
                       help="a smaller grid, the same repeats per cell (the attention grid: seconds on tiny on a CPU)")
    sweep.add_argument("--threads", type=int, help=THREADS_HELP)
    sweep.add_argument("--json", help="write the rows and settings here")
    sweep.add_argument("--csv", help="write the rows as CSV here")
    sweep.add_argument("--html", help="write the chart as a standalone HTML page here")
    sweep.set_defaults(func=cmd_sweep)
    for command in (run, bench, sweep):         # each saves its report to the run history when it ends
        history_cli.add_save_options(command)
        command.add_argument("--slo", type=_targets, metavar="ttft_ms=MS,tpot_ms=MS",
                             help=f"latency targets (e.g. {slo.EXAMPLE}): each result says whether its requests met "
                                  "them, with request throughput and goodput (requests meeting every target per "
                                  "second, vLLM's definition)")
        command.add_argument("--remote", action="append", metavar="URL[,model=M,name=N,api_key_env=E]",
                             help="a served model (an OpenAI-compatible server, e.g. vLLM at http://host:8000/v1) "
                                  "as one more variant; repeat for several")
        command.add_argument("--engine", action="append", metavar=ENGINE_METAVAR, help=ENGINE_HELP)
    history_cli.add_command(sub)
    runtimes.add_command(sub)
    return top



def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        check_inputs(args)
        return args.func(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
