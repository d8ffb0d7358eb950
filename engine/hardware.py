"""The device a preset runs on: name, memory and peak memory bandwidth.

The orchestrator asks NVML (nvidia-ml-py), which does not initialise CUDA, so the UI process
stays free of torch. Peak bandwidth comes from a datasheet table; `measure_copy_bandwidth`
(worker side, imports torch) measures it with a large device-to-device copy.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

GB = 1e9

# Datasheet peak memory bandwidth, bytes/s. Matched against the NVML name, most specific first.
DATASHEET_BANDWIDTH: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H200",), 4800 * GB),
    (("H100", "NVL"), 3900 * GB),
    (("H100", "PCIE"), 2000 * GB),
    (("H100",), 3350 * GB),                 # SXM, e.g. "NVIDIA H100 80GB HBM3"
    (("A100", "80GB", "PCIE"), 1935 * GB),
    (("A100", "80GB"), 2039 * GB),          # SXM4-80GB
    (("A100",), 1555 * GB),                 # 40 GB, SXM4 or PCIe
    (("L40S",), 864 * GB),
    (("L40",), 864 * GB),
    (("A10G",), 600 * GB),
    (("A10",), 600 * GB),
    (("L4",), 300 * GB),
    (("T4",), 320 * GB),
    (("RTX 4090",), 1008 * GB),
    (("RTX 3090",), 936 * GB),
)


def datasheet_bandwidth(name: str) -> float | None:
    """Peak memory bandwidth in bytes/s from the datasheet table, or None for an unknown device."""
    upper = name.upper()
    for keys, bandwidth in DATASHEET_BANDWIDTH:
        if all(key in upper for key in keys):
            return bandwidth
    return None


@dataclass(frozen=True)
class Device:
    """One device as the orchestrator sees it."""
    kind: str                                # "cuda" or "cpu"
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int] | None
    driver: str | None
    datasheet_bandwidth_bytes_per_s: float | None

    @property
    def key(self) -> str:
        """What two workers compare to know they share a device."""
        return f"{self.kind}:{self.index}"

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_device() -> Device:
    """The host CPU and its memory."""
    memory = psutil.virtual_memory()
    return Device("cpu", 0, f"CPU: {_cpu_name()} ({psutil.cpu_count()} threads)", memory.total,
                  memory.available, None, None, None)


def cuda_devices() -> list[Device]:
    """NVIDIA GPUs visible to NVML (honouring CUDA_VISIBLE_DEVICES by index); [] without any."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        indices = list(range(count))
        if visible is not None:
            indices = [int(i) for i in visible.split(",") if i.strip().isdigit() and int(i) < count]
        driver = pynvml.nvmlSystemGetDriverVersion()
        devices = []
        for logical, physical in enumerate(indices):
            handle = pynvml.nvmlDeviceGetHandleByIndex(physical)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            capability = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
            devices.append(Device("cuda", logical, name, int(memory.total), int(memory.free),
                                  capability, driver if isinstance(driver, str) else driver.decode(),
                                  datasheet_bandwidth(name)))
        return devices
    finally:
        pynvml.nvmlShutdown()


def resolve(device: str) -> Device:
    """The device for a preset's `device` field: "auto" takes the first GPU if there is one."""
    if device == "cpu":
        return cpu_device()
    gpus = cuda_devices()
    if device.startswith("cuda"):
        if not gpus:
            raise DeviceError(f"the preset asks for {device!r} but no NVIDIA GPU is visible here: "
                              "set `device: auto` or `device: cpu` in the preset, or run on a GPU machine")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= len(gpus):
            raise DeviceError(f"{device!r} does not exist: this machine has {len(gpus)} GPU(s)")
        return gpus[index]
    return gpus[0] if gpus else cpu_device()


class DeviceError(ValueError):
    """The requested device is not here."""


def process_gpu_bytes(pid: int, index: int = 0) -> int | None:
    """GPU memory used by one process, as nvidia-smi shows it (NVML); None where unknown."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
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
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
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


def _bandwidth_cache_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "sidebyside" / "copy-bandwidth-best.json"   # best of the copies (older files held a mean)


def measure_copy_bandwidth(device_name: str, torch_device: str = "cuda", size_bytes: int | None = None,
                           repeats: int = 20, use_cache: bool = True) -> float:
    """Peak memory bandwidth in bytes/s from a large device-to-device copy (bytes read + written).

    The best of `repeats` timed copies, as STREAM reports: a peak, so the slowest copies (another
    process, a clock ramping up) do not lower it. On a GPU it is measured once per device name
    and cached on disk; on a CPU, where other programs share the memory and a copy takes a
    second at most, it is measured afresh every time. Worker side: imports torch.
    """
    cuda = torch_device.startswith("cuda")
    use_cache = use_cache and cuda
    cache_path = _bandwidth_cache_path()
    cache = {}
    if use_cache and cache_path.exists():
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
        if device_name in cache:
            return float(cache[device_name])
    import torch
    size_bytes = size_bytes or (1 << 30 if cuda else 1 << 28)   # far above any cache
    src = torch.rand(size_bytes // 4, dtype=torch.float32, device=torch_device)   # written: every page is real
    dst = torch.zeros_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    seconds = min(times)
    bandwidth = 2 * src.numel() * src.element_size() / seconds
    del src, dst
    if use_cache:
        cache[device_name] = bandwidth
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cache, indent=1))
        except OSError:
            pass
    return bandwidth


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


def usable_cores() -> set[int]:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(psutil.cpu_count() or 1))


def core_siblings(core: int, cpus: Path = Path("/sys/devices/system/cpu")) -> frozenset[int]:
    """The logical CPUs that share `core`'s physical core (itself included): its hyper-threads.

    Read from Linux's topology files ("0,8" or "0-1"); a core whose topology is unknown stands alone.
    """
    try:
        text = (cpus / f"cpu{core}" / "topology" / "thread_siblings_list").read_text().strip()
    except OSError:
        return frozenset({core})
    siblings = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        siblings.update(range(int(first), int(last or first) + 1))
    return frozenset(siblings | {core})


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
