"""Dataset I/O (import name ``matteforge.dataset``, folder ``matteforge/dataset/``).

Everything that reads or writes a dataset and nothing that computes pixels: locations and
atomic writes (storage, retry), the output's lock, the file codec, the Parquet manifest and the
``Manifest`` that owns it, why an input did not read (unreadable), verification and repair,
stats, the dataset card, the HTML report and evaluation against ground truth.
"""
