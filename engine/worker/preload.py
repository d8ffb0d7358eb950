"""What the fork server imports once, so that a CPU worker forked from it starts without importing
torch and transformers again (about 3.6 s of a core per worker on a 2-core CPU, BENCHMARKS.md).

The fork server is multiprocessing's: a process started ahead of the first CPU worker (app.main,
Engine.prepare), that imports this module and then forks every CPU worker from itself
(engine/process.py), with what it imported frozen (engine.process.long_lived_imports). Nothing here
may start the CUDA driver: a process forked after CUDA was initialised cannot use it. Workers on a
GPU are spawned fresh all the same; PYTORCH_NVML_BASED_CUDA_CHECK makes any
`torch.cuda.is_available()` made while importing ask NVML instead of the CUDA runtime (PyTorch's
documented switch for this).
"""
import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

from engine.process import long_lived_imports  # noqa: E402  (imports neither torch nor transformers)

with long_lived_imports():       # frozen before the fork server forks its first worker
    from engine.worker.serve import quiet_libraries  # (imports neither torch nor transformers)

    quiet_libraries()            # before transformers reads its verbosity
    import psutil  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401  (the built-in presets' models)

    import engine.worker.runner  # noqa: F401  (the worker's own modules; they import no CUDA)
