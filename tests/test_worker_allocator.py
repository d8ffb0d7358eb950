"""The CPU worker's fixed allocator (engine/worker/allocator.py): a request's temporaries reuse memory."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# a 16 MiB temporary made, written, freed and made again, as a prefill's largest ones are request after
# request: the page faults of the second time, in a fresh process, with and without steady()
PROBE = """
import ctypes, json, resource, sys
sys.path.insert(0, {root!r})
from engine.worker import allocator
applied = allocator.steady() if {steady} else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 16 * 2**20
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"applied": applied, "faults": faults}}))
"""


def probe(steady: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), steady=steady)], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_steady_allocator_gives_the_next_request_the_memory_the_last_one_freed():
    fixed, default = probe(True), probe(False)
    pages = 16 * 2**20 // 4096
    assert fixed["applied"] is True
    assert default["faults"][1] > pages // 2                   # glibc's own: freed to the kernel, faulted in again
    assert fixed["faults"][0] > pages // 2 and max(fixed["faults"][1:]) < pages // 20   # the first time only
