"""Prefect flows and their tasks: import name ``matteforge.flows``, folder ``flows/`` at the top
of the repository (``pyproject.toml`` maps it).

Only orchestration lives here: ``build`` (the build-dataset flow), ``reprocess`` (a new version
from a parent dataset) and ``evaluate``.  Each is a short list of calls into
``matteforge.steps`` (Prefect-free build steps), ``matteforge.dataset`` (dataset I/O) and
``matteforge.tasks`` (the per-sample stages); no image math.
"""
