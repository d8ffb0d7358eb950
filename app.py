"""The dashboard: one prompt through several model variants, side by side, in the browser.

`python app.py [--host H] [--port P] [--share] [--preset NAME] [--mode fair|race] [--threads N]`

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

from engine import presets
from engine.errors import DeviceError, PresetError
from ui.page import build_app, launch_kwargs
from ui.state import Engines


def share_reachable(timeout_s: float = 3.0) -> str | None:
    """None when Gradio's share server answers; else why not (so --share can say so once)."""
    try:
        socket.create_connection(("api.gradio.app", 443), timeout=timeout_s).close()
        return None
    except OSError as error:
        return str(error) or type(error).__name__


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description="Side-by-side inference dashboard (Gradio).")
    top.add_argument("--host", help="address to serve on (default: Gradio's, 127.0.0.1 or $GRADIO_SERVER_NAME)")
    top.add_argument("--port", type=int, help="port (default: Gradio's, 7860 or $GRADIO_SERVER_PORT)")
    top.add_argument("--share", action="store_true", help="ask Gradio for a public link")
    top.add_argument("--preset", default="tiny", help=f"preset shown first: {', '.join(presets.available())}")
    top.add_argument("--mode", choices=("fair", "race"), default="fair", help="mode selected first")
    top.add_argument("--threads", type=int, help="torch CPU threads per worker (default: on a CPU device, "
                     "all cores but one, which is left to the page; on a GPU host, torch's)")
    return top


def share_wanted(share: bool) -> bool:
    """--share, unless on a Space (public already) or when Gradio's share server cannot be reached."""
    if not share or os.environ.get("SYSTEM") == "spaces":
        return False
    reason = share_reachable()
    if reason:
        print(f"--share: no public link ({reason}: Gradio's share server cannot be reached); "
              "serving locally only.", file=sys.stderr)
    return reason is None


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    engines = Engines(threads=args.threads)
    try:
        demo = build_app(engines, args.preset, args.mode)
    except (PresetError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    share = share_wanted(args.share)
    demo.queue(default_concurrency_limit=1)
    signal.signal(signal.SIGTERM, signal.default_int_handler)     # stop like Ctrl-C: close workers too
    try:
        # quiet: Gradio's own hint about share=True would contradict the line above
        demo.launch(server_name=args.host, server_port=args.port, share=share, quiet=True,
                    prevent_thread_lock=True, **launch_kwargs())
        print(f"* Running on local URL:  {demo.local_url}", flush=True)
        demo.block_thread()
    finally:
        engines.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
