"""The build's steps without Prefect (import name ``matteforge.steps``, folder
``matteforge/steps/``).

What ``flows/build.py`` strings together, each a plain function so tests and the CLI call it
without a flow: list and plan the inputs (preview, plan), fingerprint them into near-duplicate
groups (groups), index the backgrounds (backgrounds), run one shard of samples through the
recipe and commit it (shard; the job and its summary are in jobs, so the flow's process
needs no stage), settle the same bytes under several names (duplicates), and the
progress events a build emits (progress).
"""
