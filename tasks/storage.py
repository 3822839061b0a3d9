"""fsspec I/O used by every stage wrapper: listing, reading, atomic writing.

Paths are fsspec URIs (``/local/dir``, ``file://``, ``s3://``, ``memory://`` ...).  Writes go to a
temporary name first and are renamed into place, so a reader never sees half a file and a
manifest never names a file that was not completely written.
"""

from __future__ import annotations

import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs

_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def redact_uri(uri: str) -> str:
    """Drop ``user:password@`` from a URI so credentials never reach a manifest or a log."""
    return _USERINFO.sub(r"\1", uri)


@dataclass(frozen=True)
class Location:
    """A filesystem plus a root path on it; ``uri`` keeps the caller's spelling for display."""

    fs: fsspec.AbstractFileSystem
    root: str
    uri: str

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if parts else self.root

    def url(self, path: str) -> str:
        """A full URI for a path on this filesystem (protocol included for remote ones)."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if protocol in ("file", "local"):
            return path
        return f"{protocol}://{path.removeprefix(protocol + '://')}"


def locate(uri: str, storage_options: dict[str, Any] | None = None) -> Location:
    fs, root = url_to_fs(uri, **(storage_options or {}))
    return Location(fs=fs, root=root.rstrip("/") or "/", uri=uri)


def list_file_sizes(loc: Location, extensions: list[str] | None = None) -> list[tuple[str, int]]:
    """(path, size) of every file under ``loc`` (recursively), sorted, filtered by suffix.

    A root that is itself a file lists as that one file, so ``--input photo.jpg`` works.
    """
    if loc.fs.isfile(loc.root):
        found = {loc.root: loc.fs.info(loc.root)}
    else:
        found = {p: info for p, info in loc.fs.find(loc.root, detail=True).items()
                 if info.get("type") == "file"}
    if extensions is not None:
        wanted = {e.lower() for e in extensions}
        found = {p: i for p, i in found.items() if posixpath.splitext(p)[1].lower() in wanted}
    return [(p, found[p].get("size")) for p in sorted(found)]


def list_files(loc: Location, extensions: list[str] | None = None) -> list[str]:
    return [path for path, _ in list_file_sizes(loc, extensions)]


def read_bytes(loc: Location, path: str, max_bytes: int | None = None) -> bytes:
    """Read a whole file, refusing files over ``max_bytes`` before reading them."""
    if max_bytes is not None:
        size = loc.fs.size(path)
        if size is not None and size > max_bytes:
            raise ValueError(f"file is {size} bytes, over the limit of {max_bytes}")
    with loc.fs.open(path, "rb") as fh:
        return fh.read()


def write_bytes_atomic(loc: Location, path: str, data: bytes) -> None:
    """Write under a temporary sibling name, then rename into place."""
    parent = posixpath.dirname(path)
    loc.fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    try:
        with loc.fs.open(tmp, "wb") as fh:
            fh.write(data)
        loc.fs.mv(tmp, path)
    finally:
        if loc.fs.exists(tmp):
            loc.fs.rm(tmp)
