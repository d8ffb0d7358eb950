"""What the dashboard and the command line show, gradio-free: the run view, charts, tables.

run.py folds a run's events into per-variant lanes; run_charts.py and sweep_charts.py draw them;
summary.py turns a report into the summary rows; tables.py formats every number; palette.py
holds the colours every chart and card shares.
"""
