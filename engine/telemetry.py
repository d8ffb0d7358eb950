"""What a worker reads about the machine around a request: other processes' load on its cores,
its peak resident memory, the GPU's SM clock and its own GPU memory as NVML counts it.

Needs psutil and (for the GPU readings) nvidia-ml-py, never torch: NVML does not initialise CUDA.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import psutil

from engine.hardware import nvml_index


def reset_peak_rss() -> bool:
    """Start a new peak resident-set measurement for this process (Linux: clear_refs 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since the last reset (VmHWM), or since it started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


try:
    TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")      # the unit the kernel counts CPU time in
except (AttributeError, ValueError, OSError):
    TICK_S = 0.01


def _busy_s(times) -> float:
    """CPU seconds a core has spent working (steal included: a hypervisor that runs another guest
    takes the core as surely as a local process; guest time is already inside user time)."""
    busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    return busy - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def busy_cpu_s(cores: set[int] | None = None) -> float:
    """CPU seconds spent working on the given cores (all of them when None), by every process."""
    per_core = psutil.cpu_times(percpu=True)      # in /proc/stat order: index = core id, no core offline
    if cores is None or max(cores, default=0) >= len(per_core):
        return _busy_s(psutil.cpu_times())
    return sum(_busy_s(per_core[core]) for core in cores)


def preemptions() -> int:
    """How often the kernel has taken the CPU from this process's main thread, the one that serves
    requests (involuntary context switches), as Linux counts them in /proc/PID/status."""
    return int(psutil.Process().num_ctx_switches().involuntary)


def own_cpu_s() -> float:
    """CPU seconds this process has used, all its threads."""
    own = psutil.Process().cpu_times()
    return own.user + own.system


class HostLoad:
    """How many cores other processes kept busy, on the cores this process runs on, over a span.

    A decode step that needs the cores it was given is slowed by anything else that runs there: a
    browser drawing the page on the same machine, another job, a neighbouring VM (steal).
    others_cores = (CPU time of those cores - this process's own) / wall time: a lower bound where
    some of this process's threads may run elsewhere (a pinned GPU worker's driver threads), never
    an alarm raised by its own work. The kernel counts CPU time in ticks (10 ms on Linux):
    `resolution_cores` is how far off the figure may be from counting alone, large for a short span
    (a 50 ms request on 2 cores: 0.6 cores).
    """

    def __init__(self, cores: set[int] | None = None, clock=time.perf_counter, machine=busy_cpu_s, own=own_cpu_s,
                 tick_s: float = TICK_S, switches=preemptions):
        self.cores = cores
        self._clock, self._machine, self._own, self._tick_s, self._switches = clock, machine, own, tick_s, switches
        self.others_cores: float | None = None
        self.resolution_cores: float | None = None
        self.preemptions: int | None = None

    def __enter__(self) -> "HostLoad":
        self._t, self._m, self._o, self._p = self._clock(), self._machine(self.cores), self._own(), self._switches()
        return self

    def __exit__(self, *exc) -> None:
        wall = self._clock() - self._t
        others = (self._machine(self.cores) - self._m) - (self._own() - self._o)
        self.preemptions = self._switches() - self._p
        if wall > 0:
            counted = len(self.cores) if self.cores else (psutil.cpu_count() or 1)
            self.others_cores = max(others, 0.0) / wall
            self.resolution_cores = (counted + 1) * self._tick_s / wall    # each core's count and our own


def process_gpu_bytes(pid: int, index: int = 0) -> int | None:
    """GPU memory used by one process on CUDA device `index`, as nvidia-smi shows it (NVML); None where unknown."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index(index))
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == pid and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
        return None
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


class ClockReader:
    """The GPU's SM clock in MHz through NVML, one handle for many reads; read() is None where unknown."""

    def __init__(self, index: int):
        self.handle = None
        try:
            import pynvml
            pynvml.nvmlInit()
        except Exception:
            return
        self._nvml = pynvml
        try:
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index(index))
        except Exception:
            pynvml.nvmlShutdown()                 # init succeeded: undo it, as close() would

    def read(self) -> int | None:
        if self.handle is None:
            return None
        try:
            return int(self._nvml.nvmlDeviceGetClockInfo(self.handle, self._nvml.NVML_CLOCK_SM))
        except Exception:
            return None

    def close(self) -> None:
        if self.handle is not None:
            self.handle = None
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
