"""fsspec I/O used by every stage wrapper: listing, reading, atomic writing.

Paths are fsspec URIs (``/local/dir``, ``file://``, ``s3://``, ``gs://``, ``az://``,
``memory://`` ...), opened with the caller's ``storage_options``.  Every write is atomic, so a
reader never sees half a file and a manifest never names a file that was not completely written:

* local disks: the bytes go to ``<root>/.tmp/`` first and are renamed into place (a rename within
  one filesystem is atomic; the folder is one place to clear after a killed build);
* object stores: one ``pipe_file`` call, i.e. one PUT (or one multipart upload, completed by a
  single request).  An object store makes an object visible whole or not at all, and a "rename"
  there is a copy plus a delete, so a temporary name would double the traffic and add nothing.
"""

from __future__ import annotations

import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from matteforge.tasks.retry import DEFAULT_POLICY, RetryPolicy, with_retries

_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def redact_uri(uri: str) -> str:
    """Drop ``user:password@`` from a URI so credentials never reach a manifest or a log."""
    return _USERINFO.sub(r"\1", uri)


@dataclass(frozen=True)
class Location:
    """A filesystem plus a root path on it; ``uri`` keeps the caller's spelling for display.

    ``retry`` travels with the location so every read and write through it (on whichever Dask
    worker) retries transient errors the way the build's config says.
    """

    fs: fsspec.AbstractFileSystem
    root: str
    uri: str
    retry: RetryPolicy = DEFAULT_POLICY

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if parts else self.root

    def url(self, path: str) -> str:
        """A full URI for a path on this filesystem (protocol included for remote ones)."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if protocol in ("file", "local"):
            return path
        return f"{protocol}://{path.removeprefix(protocol + '://')}"


def locate(
    uri: str, storage_options: dict[str, Any] | None = None, retry: RetryPolicy = DEFAULT_POLICY
) -> Location:
    fs, root = url_to_fs(uri, **(storage_options or {}))
    return Location(fs=fs, root=root.rstrip("/") or "/", uri=uri, retry=retry)


def list_file_sizes(
    loc: Location, extensions: list[str] | None = None
) -> list[tuple[str, int | None]]:
    """(path, size) of every file under ``loc`` (recursively), sorted, filtered by suffix.

    A root that is itself a file lists as that one file, so ``--input photo.jpg`` works.
    Directories are walked, never listed, even when named like an image (``x.jpg/``).
    Symbolic links (local disks) are listed by what they point at, see :func:`_link_target`.
    """
    if loc.fs.isfile(loc.root):
        entries = {loc.root: loc.fs.info(loc.root)}
    else:
        entries = loc.fs.find(loc.root, detail=True)
    if extensions is not None:
        wanted = {e.lower() for e in extensions}
        entries = {p: i for p, i in entries.items() if posixpath.splitext(p)[1].lower() in wanted}
    found: dict[str, dict[str, Any]] = {}
    for path, info in entries.items():
        if info.get("islink") and info.get("type") != "file":
            info = _link_target(loc, path)
        if info is not None and info.get("type") == "file":
            found[path] = info
    return [(p, found[p].get("size")) for p in sorted(found)]


def _link_target(loc: Location, path: str) -> dict[str, Any] | None:
    """What a symbolic link stands for in a listing: its file, nothing, or an unreadable file.

    A link to a file lists as that file.  A link to a directory is not followed (a link to
    ``..`` would loop forever).  A broken link or a loop of links lists with an unknown size,
    so reading it fails and the failure becomes a manifest row instead of a silent omission.
    """
    try:
        target = loc.fs.info(path)
    except OSError:  # FileNotFoundError (broken) or ELOOP (a loop of links)
        return {"type": "file", "size": None}
    return target if target.get("type") == "file" else None


def list_files(loc: Location, extensions: list[str] | None = None) -> list[str]:
    return [path for path, _ in list_file_sizes(loc, extensions)]


class FileTooLarge(ValueError):
    """A file over the configured size limit: refused before a byte of it is read."""


def read_bytes(loc: Location, path: str, max_bytes: int | None = None) -> bytes:
    """Read a whole file, refusing files over ``max_bytes`` before reading them.

    Transient errors are retried per ``loc.retry``; a missing file or a refused one is not.
    """
    return with_retries(lambda: _read_once(loc, path, max_bytes), loc.retry)


def _read_once(loc: Location, path: str, max_bytes: int | None) -> bytes:
    if max_bytes is not None:
        size = loc.fs.size(path)
        if size is not None and size > max_bytes:
            raise FileTooLarge(f"file is {size} bytes, over the limit of {max_bytes}")
    with loc.fs.open(path, "rb") as fh:
        return fh.read()


# Filesystems whose single-object write is all-or-nothing (see the module docstring).
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})
TEMP_DIR = ".tmp"


def _protocols(loc: Location) -> set[str]:
    protocol = loc.fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)


def is_local(loc: Location) -> bool:
    return bool(_protocols(loc) & {"file", "local"})


def write_bytes_atomic(loc: Location, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old object or the new one, never half.

    Transient errors are retried per ``loc.retry``: each attempt is a whole atomic write (a new
    temporary name), so a failed attempt leaves at most a temporary file, never half a file.
    """
    with_retries(lambda: _write_once(loc, path, data), loc.retry)


def _write_once(loc: Location, path: str, data: bytes) -> None:
    if _protocols(loc) & _OBJECT_STORES:
        loc.fs.pipe_file(path, data)
        return
    loc.fs.makedirs(posixpath.dirname(path), exist_ok=True)
    if is_local(loc):
        tmp_dir = loc.path(TEMP_DIR)
        loc.fs.makedirs(tmp_dir, exist_ok=True)
    else:  # another kind of filesystem: a sibling name, renamed the same way
        tmp_dir = posixpath.dirname(path)
    tmp = posixpath.join(tmp_dir, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    try:
        with loc.fs.open(tmp, "wb") as fh:
            fh.write(data)
        loc.fs.mv(tmp, path)
    finally:
        if loc.fs.exists(tmp):
            loc.fs.rm(tmp)


def clear_temporary(loc: Location) -> None:
    """Remove what killed writers left in ``<root>/.tmp/``; call only while nothing writes."""
    tmp_dir = loc.path(TEMP_DIR)
    if is_local(loc) and loc.fs.exists(tmp_dir):
        loc.fs.rm(tmp_dir, recursive=True)


def refresh(loc: Location, path: str | None = None) -> None:
    """Forget cached listings: other processes (Dask workers) write to the same store.

    s3fs and friends cache directory listings per filesystem instance and answer ``exists`` and
    ``ls`` from them, which would hide shards committed by workers since the last listing.
    """
    loc.fs.invalidate_cache(path)
