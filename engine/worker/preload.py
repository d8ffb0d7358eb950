"""What the fork server imports once, so that a CPU worker forked from it starts without importing
torch and transformers again (about 3.6 s of a core per worker on a 2-core CPU, BENCHMARKS.md).

The fork server is multiprocessing's: a process started ahead of the first CPU worker (app.main,
Engine.prepare), that imports this module and then forks every CPU worker from itself
(engine/process.py). Nothing here may start the CUDA driver: a process forked after CUDA was
initialised cannot use it. Workers on a GPU are
spawned fresh all the same; PYTORCH_NVML_BASED_CUDA_CHECK makes any `torch.cuda.is_available()`
made while importing ask NVML instead of the CUDA runtime (PyTorch's documented switch for this).
"""
import gc
import os

# Python's advice for a process that forks without exec (the gc.freeze documentation): no collection
# while it builds its objects, and every one of them frozen before the first fork. A worker's
# collections then skip what it inherits, instead of walking (and copying, page by page) the
# hundreds of thousands of objects that torch and transformers make.
gc.disable()
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

from engine.worker.serve import quiet_libraries  # noqa: E402  (imports neither torch nor transformers)

quiet_libraries()                # before transformers reads its verbosity
import psutil  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria  # noqa: E402,F401
from transformers.models.llama import modeling_llama  # noqa: E402,F401  (the built-in presets' models)

import engine.worker.runner  # noqa: E402,F401  (the worker's own modules; they import no CUDA)

gc.freeze()                      # what the fork server made, before it forks the first worker
gc.enable()
