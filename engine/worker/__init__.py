"""The child side: what runs inside one worker process, and only there.

A worker process starts in `serve.main` (named to the process layer as "engine.worker.serve:main"),
loads one variant (`runner`, `models`, `decode`, `fused`), measures each request with its
`instruments` and answers probes (`probes`), and sends events up its pipe. These modules import
torch and transformers; nothing on the orchestrator side imports them, so the process that serves
the page never initialises CUDA.
"""
