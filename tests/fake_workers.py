"""Worker entry points for the process layer's tests: real child processes that load no model.

The process layer takes its entry point by name ("module:function"), so these stand in for
engine.worker.serve:main where a test is about processes, not models. Each writes what it saw
to $SIDEBYSIDE_FAKE_LOG/<variant>.json.
"""
import json
import os
import time

from engine import events


def _log(spec, **facts) -> None:
    folder = os.environ.get("SIDEBYSIDE_FAKE_LOG")
    if folder:
        with open(os.path.join(folder, f"{spec.variant}.json"), "w") as out:
            json.dump(facts, out)


def slow_to_stop(spec, conn, cancel) -> None:
    """Loads at once; asked to stop, takes a second to do it."""
    conn.send(events.Loaded(spec.variant, 0.0, 0.0, 0, "cpu", "float32", "fake"))
    while conn.recv() is not None:
        pass
    received = time.time()
    time.sleep(1.0)
    _log(spec, received=received, exited=time.time())


def crash(spec, conn, cancel) -> None:
    """Says it is loading, then dies."""
    conn.send(events.Status(spec.variant, "loading"))
    os._exit(3)


def describe(spec, conn, cancel) -> None:
    """Writes how it was started and what it found already imported (and frozen), then ends."""
    import gc
    import multiprocessing
    import sys
    torch = sys.modules.get("torch")
    _log(spec, start_method=multiprocessing.get_start_method(allow_none=True) or "",
         process_name=multiprocessing.current_process().name, cwd=os.getcwd(), marker=os.environ.get("SBS_MARKER"),
         torch_imported=torch is not None, transformers_imported="transformers" in sys.modules,
         cuda_initialized=bool(torch is not None and torch.cuda.is_initialized()),
         parent_alive=multiprocessing.parent_process() is not None and multiprocessing.parent_process().is_alive(),
         gc_enabled=gc.isenabled(), frozen_objects=gc.get_freeze_count())
