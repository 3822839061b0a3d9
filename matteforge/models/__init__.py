"""Segmentation models (import name ``matteforge.models``): the registry of built-in backends,
users' own models, and fetching their weights (sha256-checked, cached).  How a built-in model
file is executed is fenced off in ``executors/``.  No Prefect, no dataset I/O.
"""
