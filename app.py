"""The dashboard: one prompt through several model variants, side by side, in the browser.

`python app.py [--host H] [--port P] [--share] [--public | --private] [--auth USER:PASS] ...` (--help)

This file parses the command line and launches; the page is the ui package (ui/page.py), a thin
view over the engine (engine/pool.py). Runs are serialized by Gradio's queue (one run on the device
at a time); each visitor's run lives in their gr.State, so Stop cancels only that visitor's run,
and a closed page cancels its run when Gradio closes the generator.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time

from typing import TYPE_CHECKING

from engine import hardware, presets, remote, source
from engine.errors import DeviceError, InputError, ModelSourceError, PresetError
from engine.history import HISTORY_ENV, default_path
from engine.launch import ENGINE_HELP, ENGINE_METAVAR
from engine.limits import Limits
from engine.process import long_lived_imports, start_fork_server, stop_fork_server

if TYPE_CHECKING:
    from ui.state import Engines, PageHistory

# Every worker process runs this file again, as `__mp_main__` (multiprocessing's spawn and fork server
# import the parent's main script in the child), so its top level imports nothing heavy: gradio and
# the page (the ui package) are imported inside the functions that build and serve the page.


def share_reachable(timeout_s: float = 3.0) -> str | None:
    """None when Gradio's share server answers; else why not (so --share can say so once)."""
    try:
        socket.create_connection(("api.gradio.app", 443), timeout=timeout_s).close()
        return None
    except OSError as error:
        return str(error) or type(error).__name__


def parser() -> argparse.ArgumentParser:
    from ui import mcp
    top = argparse.ArgumentParser(description="Side-by-side inference dashboard (Gradio).")
    top.add_argument("--host", help="address to serve on (default: Gradio's, 127.0.0.1 or $GRADIO_SERVER_NAME)")
    top.add_argument("--port", type=int, help="port (default: Gradio's, 7860 or $GRADIO_SERVER_PORT)")
    top.add_argument("--share", action="store_true", help="ask Gradio for a public link")
    top.add_argument("--preset", help=f"preset shown first (default: {DEFAULT_PRESET}, or when it does not load the "
                     f"first that does, those needing no download first): {', '.join(presets.available())}")
    top.add_argument("--mode", choices=("fair", "race"), default="fair", help="mode selected first")
    top.add_argument("--threads", type=int, help="torch CPU threads per worker (default: on a CPU device, "
                     "all cores but one, which is left to the page; on a GPU host, torch's)")
    mode = top.add_mutually_exclusive_group()
    mode.add_argument("--public", action="store_true", default=None,
                      help="limit what a visitor may ask (on by itself on a Space and with --share)")
    mode.add_argument("--private", dest="public", action="store_false", help="no limits beyond the presets' own")
    top.add_argument("--remote", action="append", metavar="URL[,model=M,name=N,api_key_env=E]",
                     help="a served model (an OpenAI-compatible server such as vLLM at http://host:8000/v1) as one "
                          "more variant of every preset; repeat for several. Only the command line and preset "
                          "files name endpoints, never a visitor")
    top.add_argument("--engine", action="append", metavar=ENGINE_METAVAR, help=ENGINE_HELP)
    top.add_argument("--auth", help=f"USER:PASS: a login in front of the page (or ${AUTH_ENV})")
    top.add_argument("--trusted-proxies", metavar="IPS", help="comma-separated addresses or networks of the reverse "
                     "proxies in front of this app, whose X-Forwarded-For names the visitor (default: "
                     "$FORWARDED_ALLOW_IPS, else none: each visitor is the address that connects; a Space's proxy "
                     "is known)")
    top.add_argument("--mcp", action="store_true",
                     help="also serve the page's compare, experiment and history queries as MCP tools, at "
                          f"{mcp.PATH} (Gradio's MCP server; needs the gradio[mcp] extra)")
    top.add_argument("--public-presets", help="comma-separated presets a public page offers (default: those that "
                     "need no download and fit the device with their default variants)")
    kept = top.add_argument_group("run history (engine/history.py; the History tab)")
    saving = kept.add_mutually_exclusive_group()
    saving.add_argument("--history", metavar="PATH", help=f"the history file the page saves runs to and shows "
                        f"(default: ${HISTORY_ENV} or {default_path()}); a public page uses it only with "
                        "--keep-public-history")
    saving.add_argument("--no-history", action="store_true", help="save no run, and leave the History tab out")
    kept.add_argument("--keep-public-history", action="store_true",
                      help="on a public page, keep visitors' runs in the history after their session ends (each "
                           "visitor still sees only their own; default: in a temporary file of this process, "
                           "deleted when the session ends)")
    limits = top.add_argument_group("public limits (see engine/limits.py)")
    for flag, field, kind, what in LIMIT_FLAGS:
        limits.add_argument(flag, dest=field, type=kind, help=what)
    return top


AUTH_ENV = "SIDEBYSIDE_AUTH"
DEFAULT_PRESET = "smollm2-135m"      # a real model; "tiny" is the quickest look
LIMIT_FLAGS = (("--queue-size", "queue_size", int, "runs that may wait for the device"),
               ("--max-prompt-chars", "prompt_chars", int, "characters of a prompt"),
               ("--max-repeats", "repeats", int, "timed requests per variant"),
               ("--max-new-tokens", "new_tokens", int, "new tokens per request"),
               ("--max-work-tokens", "work_tokens", int, "token positions of one run"),
               ("--run-deadline", "run_deadline_s", float, "seconds after which a run is stopped"),
               ("--unread-timeout", "unread_s", float, "seconds a job's updates may go unread before it is stopped"),
               ("--max-sessions", "sessions", int, "visitors' sessions whose state is kept"),
               ("--max-request-bytes", "body_bytes", int, "bytes of one request's body (default: what the longest "
                "prompt needs, at least 1 MiB)"))


def page_limits(args) -> Limits:
    """Public limits (their defaults, less what the flags change) or a private page's none."""
    public = args.public if args.public is not None else bool(args.share or os.environ.get("SYSTEM") == "spaces")
    if not public:
        return Limits()
    overrides = {field: getattr(args, field) for _, field, _, _ in LIMIT_FLAGS if getattr(args, field) is not None}
    for field, value in overrides.items():
        if value <= 0:
            raise ValueError(f"--{field.replace('_', '-')} must be positive, got {value}")
    return Limits.public_defaults(**overrides)


def opening_presets(asked: str | None, offered: list[str] | None) -> list[str]:
    """The presets to open the page on, in order: the one asked for alone; else the default, then every
    other preset that loads (a broken default file, or one that cannot run here, must not keep the
    app from starting: the page lists it as unavailable), first those that need no download (a page
    opened offline on a hub model not in the cache could run nothing)."""
    if asked is not None:
        return [asked]
    others = [name for name in presets.available() if name != DEFAULT_PRESET]
    others.sort(key=lambda name: not source.on_hand(presets.load(name)))     # stable: by name within each
    return [name for name in [DEFAULT_PRESET, *others] if offered is None or name in offered]


def open_page(engines: Engines, asked: str | None, mode: str, offered: list[str] | None,
              history: PageHistory | None = None):
    """The page, opened on the preset asked for (its PresetError or DeviceError raised as is), or on the
    first of `opening_presets` that can be used, a line on stderr for each one passed over."""
    from ui.page import build_app
    candidates = opening_presets(asked, offered)
    for preset in candidates:
        try:
            return build_app(engines, preset, mode, history)
        except (PresetError, DeviceError, ModelSourceError) as error:
            if asked is not None:
                raise
            print(f"preset {preset} cannot open the page ({error}); trying the next one", file=sys.stderr)
    raise PresetError("no preset can be used here" + (" (see the lines above)" if candidates else "")
                      + ": fix a preset file in presets/ or add one")


def credentials(args) -> tuple[str, str] | None:
    """(user, password) from --auth or $SIDEBYSIDE_AUTH; raises ValueError when it is not USER:PASS."""
    text = args.auth or os.environ.get(AUTH_ENV)
    if not text:
        return None
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise ValueError(f"--auth (or ${AUTH_ENV}) must be USER:PASS")
    return user, password


def share_wanted(share: bool) -> bool:
    """--share, unless on a Space (public already) or when Gradio's share server cannot be reached."""
    if not share or os.environ.get("SYSTEM") == "spaces":
        return False
    reason = share_reachable()
    if reason:
        print(f"--share: no public link ({reason}: Gradio's share server cannot be reached); "
              "serving locally only.", file=sys.stderr)
    return reason is None


def stop_once(signum, frame) -> None:
    """Ctrl-C or SIGTERM: ignore any further one, then stop (KeyboardInterrupt). Ignoring them here, in
    the handler, leaves no moment between the first signal and the closing in which a second (`timeout`
    signals the process and then its group) could cut the closing short."""
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    try:
        from ui.gate import trust_proxies
        limits, login = page_limits(args), credentials(args)
        trust_proxies(args.trusted_proxies)
        if args.preset is not None:
            presets.load(args.preset)                  # a name that is no preset: one line before gradio loads
    except (ValueError, PresetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not hardware.cuda_devices():
        start_fork_server()         # no GPU: every worker is forked from it, and its imports overlap gradio's
    try:
        return serve_page(args, limits, login)
    finally:
        stop_fork_server()          # the workers are stopped: it need not finish its imports


def serve_page(args, limits: Limits, login: tuple[str, str] | None) -> int:
    """Build the page, serve it until Ctrl-C or SIGTERM, then close it and its engines; 2 on a refused
    flag (one line on stderr), 0 otherwise."""
    with long_lived_imports():       # gradio and its dependencies live as long as the page
        from ui import mcp
        from ui.page import launch_kwargs, queue_kwargs
        from engine.limits import public_presets
        from ui.state import Engines, PageHistory
    offered = None
    if limits.public:
        offered = ([p.strip() for p in args.public_presets.split(",") if p.strip()] if args.public_presets
                   else public_presets())
        if args.preset is not None and args.preset not in offered:
            print(f"error: --preset {args.preset} is not among the presets this public page offers "
                  f"({', '.join(offered) or 'none'}): choose one, or list it in --public-presets", file=sys.stderr)
            return 2
    if args.mcp and mcp.missing():
        print(f"error: --mcp: {mcp.missing()}", file=sys.stderr)
        return 2
    history = None if args.no_history else PageHistory.for_page(args.history, limits.public,
                                                                 args.keep_public_history)
    if limits.public and args.history and not args.keep_public_history:
        print(f"--history: this public page keeps visitors' runs only for their session, in a temporary file, not "
              f"in {args.history} (add --keep-public-history to keep them there)", file=sys.stderr)
    try:
        served = (tuple(remote.from_flag(text) for text in args.remote or ()) +
                  tuple(remote.engine_from_flag(text) for text in args.engine or ()))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    engines = Engines(threads=args.threads, limits=limits, offered=offered, served=served)
    try:
        if history is not None:
            history.store.list(limit=1)                # a file that is no history: one line now, not per run
        demo = open_page(engines, args.preset, args.mode, offered, history)
    except (PresetError, DeviceError, InputError, ModelSourceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    share = share_wanted(args.share)
    if share and login is None:
        print("--share: anyone with the link can use this page for about a week"
              + (" within the public limits (see the page's banner)" if limits.public else
                 " without limits (--private)") + "; add --auth USER:PASS to put a login in front of it.",
              file=sys.stderr)
    demo.queue(**queue_kwargs(limits))     # public: the gate bounds runs; no direct HTTP call skips the queue
    for stop in (signal.SIGINT, signal.SIGTERM):                   # SIGTERM stops like Ctrl-C: workers too
        signal.signal(stop, stop_once)
    try:
        # quiet: Gradio's own hint about share=True would contradict the line above
        demo.launch(server_name=args.host, server_port=args.port, share=share, quiet=True,
                    prevent_thread_lock=True, auth=login,
                    mcp_server=args.mcp,        # False, not None: Gradio would read $GRADIO_MCP_SERVER
                    max_file_size=1 if limits.public else None,      # the page takes no file: refuse uploads
                    **launch_kwargs(engines.lanes(), limits))
        print(f"* Running on local URL:  {demo.local_url}", flush=True)
        if args.mcp:
            try:
                names = mcp.expose(demo, limits.public)
            except RuntimeError as error:           # Gradio only prints it, and not when quiet
                print(f"error: --mcp: {error}", file=sys.stderr)
                demo.close()
                return 2
            print(f"* MCP server (streamable HTTP): {mcp.url(demo)} (SSE: {mcp.url(demo)}sse), tools: "
                  f"{', '.join(names)}", flush=True)
        while demo.is_running:
            time.sleep(0.1)
    except KeyboardInterrupt:        # Ctrl-C or SIGTERM, while the page starts or serves
        print("Stopping: closing the page and the workers.", flush=True)
    finally:
        # a Ctrl-C or SIGTERM while closing must not cut the closing short: it would leave a traceback
        # and the workers to end by themselves
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, signal.SIG_IGN)
        # the whole page: Gradio's own block_thread() closes only its HTTP server, which then waits
        # out a 5 s timeout for the page's open event streams; demo.close() ends those first
        demo.close(verbose=False)
        engines.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
