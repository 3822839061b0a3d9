"""Hand-written model executors (import name ``matteforge.models.executors``).

A TF.js graph and a TFLite flatbuffer replayed as plain torch modules, so the built-in models
run on torch's CPU and CUDA devices; kept apart from the model registry (``models/backends.py``)
because nothing else in the project depends on how a model file is executed.  Why these exist
instead of a runtime: docs/segment.md, "Executors".
"""
