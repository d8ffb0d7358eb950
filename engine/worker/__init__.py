"""The child side: what runs inside one worker process, and only there.

A worker process starts in `serve.main` (named to the process layer as "engine.worker.serve:main"),
loads one variant (`runner`, `models`, `decode`, `fused`; or, for a served model, `served`), measures
each request with its `instruments` and answers probes (`probes`), and sends events up its pipe. What
serve asks of a loaded variant is `contract.Runner`. The local model's modules import torch and
transformers (`served`, `prompts` and `contract` do not); nothing on the orchestrator side imports any
of them, so the process that serves the page never initialises CUDA.
"""
