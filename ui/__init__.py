"""The dashboard's Gradio view, the only package that imports gradio.

page.py builds the Blocks from one module per tab (compare.py, experiments.py); their handlers
are module-level functions over a `Context` (state.py) that fill named outputs (outputs.py);
stream.py is the one loop that turns a run's events into page updates; render.py is the pure
HTML; downloads.py writes the files a visitor downloads. This file imports nothing, so that
`ui.render` can be used without gradio.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")      # a measuring instrument phones no one
