"""matteforge: portraits in, alpha-matting training data out.

Import names and the folders that hold them (docs/architecture.md):

* ``matteforge.tasks`` → ``tasks/``: the per-sample stages, pure functions.
* ``matteforge.flows`` → ``flows/``: the Prefect flows and tasks, orchestration only.
* ``matteforge.steps`` → ``matteforge/steps/``: the build's steps without Prefect.
* ``matteforge.dataset`` → ``matteforge/dataset/``: dataset I/O (storage, manifest, codec,
  verify, report).
* ``matteforge.models`` → ``matteforge/models/``: the model registry and weights;
  ``models/executors/`` runs the built-in models as torch modules.
* ``matteforge.*`` modules: the config, the CLI, the torch ``Dataset``, metrics, the demo's
  data and what keeps a build's processes in order (interrupt, prefect_env, progress_view).
"""

__version__ = "0.1.0"
