"""The pipeline's stages: import name ``matteforge.tasks``, folder ``tasks/`` at the top of the
repository (``pyproject.toml`` maps it; there is no ``matteforge/tasks/``).

Pure per-sample functions, arrays and a config in, arrays and figures out: ingest (bytes →
RGB), segment, trimap, alpha (KNN matting, a package), foreground, quality, effects, composite,
the recipe that strings them together for one portrait (``recipe.make_sample``), and the
per-input fingerprints and near-duplicate grouping.  No Prefect and no dataset I/O here: the
name is the project's layout, not Prefect's "task"; the Prefect tasks that run these stages
live in ``flows/``.
"""
