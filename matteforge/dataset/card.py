"""The dataset card, ``OUT/README.md``: what 🤗 ``datasets.load_dataset(OUT)`` reads.

A Hugging Face dataset folder is described by a README whose YAML header lists ``configs`` and,
per config, the data files of each split.  A split there is a set of files, while in the
manifest it is a column, so the build also writes one Parquet file per table and split under
``OUT/hf/`` (small: the manifests' rows, no pixels).  Every path column stays relative to the
dataset root, as in the manifest; docs/manifest.md shows how to make them ``Image()`` columns.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from matteforge.dataset.storage import Location, write_bytes_atomic

HF_DIR = "hf"
CARD = "README.md"
SPLITS = ("train", "test")
# SPDX-like words in a model's license string → the Hub's license identifiers.
_LICENSES = (("gpl-3.0", "gpl-3.0"), ("apache-2.0", "apache-2.0"), ("mit", "mit"))


def hub_licenses(text: str) -> list[str]:
    """The Hub identifiers named in a license string (``other`` when none is recognised)."""
    words = text.lower()
    found = [hub for key, hub in _LICENSES if re.search(rf"\b{re.escape(key)}\b", words)]
    return sorted(set(found)) or ["other"]


def split_tables(samples: pa.Table, composites: pa.Table) -> dict[str, dict[str, pa.Table]]:
    """{table: {split: rows}}: the ok samples and the composites of each split."""
    out: dict[str, dict[str, pa.Table]] = {"samples": {}, "composites": {}}
    for split in SPLITS:
        ok = samples.filter(pc.and_(pc.equal(samples["status"], "ok"),
                                    pc.equal(samples["split"], split)))
        out["samples"][split] = ok
        out["composites"][split] = composites.filter(pc.equal(composites["split"], split))
    return out


def write_card(out: Location, samples: pa.Table, composites: pa.Table,
               record: dict[str, Any]) -> list[str]:
    """Write ``hf/<table>/<split>.parquet`` and ``README.md``; returns the paths written.

    ``record`` is what dataset.json holds (name, model, config_hash, counts, sources).
    """
    written = []
    tables = split_tables(samples, composites)
    for table, splits in tables.items():
        for split, rows in splits.items():
            buf = io.BytesIO()
            pq.write_table(rows, buf, compression="snappy")
            rel = f"{HF_DIR}/{table}/{split}.parquet"
            write_bytes_atomic(out, out.path(rel), buf.getvalue())
            written.append(rel)
    counts = {t: {s: r.num_rows for s, r in sp.items()} for t, sp in tables.items()}
    unstored = (composites.column("merged_uri").null_count
                if "merged_uri" in composites.column_names else 0)
    text = card_text(record, counts, unstored)
    write_bytes_atomic(out, out.path(CARD), text.encode())
    return [*written, CARD]


def _unstored(n: int) -> str:
    if not n:
        return ""
    return (f"\n\n{n} composites are not stored (built with `composite.store: false`; their "
            "`merged_uri` is empty): each row holds its recipe, `matteforge.torch.MattingDataset"
            "` makes them on read, and `matteforge materialize .` writes their files.")


def card_text(record: dict[str, Any], counts: dict[str, dict[str, int]],
              unstored: int = 0) -> str:
    model = record.get("model", {})
    licenses = hub_licenses(str(model.get("license", "")))
    configs = [{"config_name": table,
                "data_files": [{"split": split, "path": f"{HF_DIR}/{table}/{split}.parquet"}
                               for split in SPLITS if counts[table].get(split)]}
               for table in ("samples", "composites")]
    configs = [c for c in configs if c["data_files"]]  # 🤗 datasets cannot read an empty file
    configs.append({"config_name": "manifest",
                    "data_files": [{"split": "rows", "path": "manifest/samples/*.parquet"}]})
    configs[0] = {**configs[0], "default": True}
    header = {
        "pretty_name": record.get("name", "matteforge dataset"),
        "license": licenses[0] if len(licenses) == 1 else licenses,
        "tags": ["image-matting", "alpha-matting", "portrait", "matteforge"],
        "task_categories": ["image-segmentation"],
        "configs": configs,
    }
    yaml_lines = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=100)
    dataset = record.get("counts", {})
    models = "\n".join(f"| `{name}` | `{sha}` |" for name, sha in
                       sorted((model.get("models") or {}).items())) or \
        f"| `{model.get('id')}` | `{model.get('sha256')}` |"
    table_rows = "\n".join(f"| {table} | {c.get('train', 0)} | {c.get('test', 0)} |"
                           for table, c in counts.items())
    return f"""---
{yaml_lines}---

# {record.get('name', 'matteforge dataset')}

Alpha-matting training data made by [matteforge](https://pypi.org/project/matteforge/) from a
collection of portraits: per photo a person mask, a trimap, an alpha matte (KNN matting) and a
foreground, and Composition-1K-style composites of each foreground over real backgrounds.

## Loading

```python
import datasets
ds = datasets.load_dataset("path/to/this/folder")                  # config "samples"
comp = datasets.load_dataset("path/to/this/folder", "composites")  # one row per composite
```

Path columns (`image_uri`, `alpha_uri`, `fg_uri`, `trimap_uri`, `merged_uri`, ...) are relative
to this folder. To read them as images:

```python
root = "path/to/this/folder"
ds = ds.map(lambda r: {{"alpha": f"{{root}}/{{r['alpha_uri']}}"}})
ds = ds.cast_column("alpha", datasets.Image())
```

## Contents

| config | train | test |
|---|---|---|
{table_rows}

`samples` holds the accepted samples of each split (a split without rows is left out); the
config `manifest` holds every input's row (rejected, failed and duplicate ones too, with a
reason). All rows: {dataset.get('samples')}
({json.dumps(dataset.get('by_status', {}), sort_keys=True)}); composites:
{dataset.get('composites')}. Near-identical photos share a split (`group_id`).{_unstored(unstored)}

## Recipe

Config hash `{record.get('config_hash')}`; the full config is in `dataset.json`.
Mask model `{model.get('id')}`, license: {model.get('license')}.

| weights | sha256 |
|---|---|
{models}

## License

The masks, mattes and foregrounds derive from the input photos and from the models above: the
inputs' own licenses apply to every file, and the models' licenses ({', '.join(licenses)})
to what they made. Sources: `{record.get('sources', {}).get('input')}` (portraits),
`{record.get('sources', {}).get('backgrounds')}` (backgrounds).
"""

