"""Index the background pool: decode each once, hash it, drop duplicates, copy it into bg/.

Backgrounds are validated up front so a corrupt one becomes a row in the backgrounds table
instead of a failure inside every composite that would have used it.
"""

from __future__ import annotations

import posixpath
from typing import Any

from matteforge.dataset.storage import (
    Location,
    printable,
    read_input,
    redact_uri,
    write_bytes_atomic,
)
from matteforge.dataset.unreadable import read_failure
from matteforge.steps.jobs import BackgroundRef
from matteforge.tasks.ingest import decode_image

_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def _reusable(known: dict[str, Any] | None, size: int | None, out: Location) -> bool:
    """A row from an earlier build still describes this file (same size, an intact-sized copy
    in place: a missing or cut copy is made again)."""
    if known is None or known["status"] != "ok" or known["source_bytes"] != size:
        return False
    bg_uri = known["bg_uri"] or ""
    if "://" in bg_uri:
        return True
    try:
        return out.fs.size(out.path(bg_uri)) == known["source_bytes"]
    except OSError:
        return False


def index_backgrounds(
    files: list[tuple[str, int | None]], src: Location, out: Location, *, copy: bool,
    max_pixels: int, max_bytes: int, min_side: int = 1,
    known: dict[str, dict[str, Any]] | None = None, follow_links_outside: bool = False,
) -> tuple[list[dict[str, Any]], list[BackgroundRef]]:
    """Rows for the backgrounds table, and the usable backgrounds in a stable order.

    ``known`` (source_uri → row of an earlier build) lets an unchanged background skip decoding.
    Sources are read like portraits (:func:`~matteforge.dataset.storage.read_input`): a link out
    of the backgrounds folder or a special file becomes a row and is never opened.
    """
    rows: list[dict[str, Any]] = []
    refs: dict[str, BackgroundRef] = {}
    for path, size in files:
        uri = printable(redact_uri(src.url(path)))
        previous = (known or {}).get(uri)
        if _reusable(previous, size, out) and previous["bg_id"] not in refs:
            rows.append(previous)
            refs[previous["bg_id"]] = BackgroundRef(previous["bg_id"], path, previous["bg_uri"])
            continue
        try:
            data = read_input(src, path, max_bytes, follow_links_outside)
        except Exception as exc:
            status, reason, detail = read_failure(exc)
            rows.append({"bg_id": "", "source_uri": uri, "status": status,
                         "reason": reason, "detail": detail})
            continue
        decoded = decode_image(data, max_pixels=max_pixels, min_side=min_side, name=path)
        row: dict[str, Any] = {
            "bg_id": decoded.sample_id, "source_uri": uri,
            "content_sha256": decoded.content_sha256, "source_bytes": decoded.n_bytes,
            "status": decoded.status, "reason": decoded.reason, "detail": decoded.detail,
            "width": decoded.width or None, "height": decoded.height or None,
        }
        if decoded.status == "ok" and decoded.sample_id in refs:
            row["status"], row["reason"] = "duplicate", "duplicate"
            row["detail"] = f"same bytes as {refs[decoded.sample_id].bg_uri}"
        elif decoded.status == "ok":
            bg_uri = uri
            if copy:
                suffix = _SUFFIX.get(decoded.source_format, posixpath.splitext(path)[1].lower())
                bg_uri = f"bg/{decoded.sample_id}{suffix}"
                write_bytes_atomic(out, out.path(bg_uri), data)
            row["bg_uri"] = bg_uri
            refs[decoded.sample_id] = BackgroundRef(decoded.sample_id, path, bg_uri)
        rows.append(row)
    return rows, [refs[k] for k in sorted(refs)]
