"""The device a preset runs on: name, memory and datasheet peak memory bandwidth.

The orchestrator asks NVML (nvidia-ml-py), which does not initialise CUDA, so the UI process
stays free of torch. What a worker measures itself lives beside it: the machine's load, memory
and clocks in engine/telemetry.py, the cores in engine/topology.py, the copy bandwidth in
worker/probes.py.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from engine.errors import DeviceError

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


def nvml_index(logical: int) -> int:
    """NVML's index of CUDA device `logical`: NVML ignores CUDA_VISIBLE_DEVICES, which renumbers the
    devices torch sees ("3,1": torch's cuda:0 is NVML's 3)."""
    visible = [int(i) for i in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if i.strip().isdigit()]
    return visible[logical] if logical < len(visible) else logical


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
