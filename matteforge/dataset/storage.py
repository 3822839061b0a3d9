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

import base64
import errno
import os
import posixpath
import re
import stat
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from matteforge.dataset.retry import DEFAULT_POLICY, RetryPolicy, with_retries

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
    """(path, size) of every input under ``loc`` (recursively), sorted, filtered by suffix.

    A root that is itself a file lists as that one file, so ``--input photo.jpg`` works.
    Directories are walked, never listed, even when named like an image (``x.jpg/``).
    On a local disk (:func:`_walk_local`) nothing the walk meets is dropped in silence: a folder
    it cannot enter is listed as an entry of its own, and a link, a special file or a path too
    long to open is listed with an unknown size, so that reading it fails and the failure
    becomes a manifest row (see :func:`read_input`).
    """
    if is_local(loc):
        return _walk_local(loc.root, extensions)
    if loc.fs.isfile(loc.root):
        entries = {loc.root: loc.fs.info(loc.root)}
    else:
        entries = loc.fs.find(loc.root, detail=True)
    entries = {p: i for p, i in entries.items() if _wanted(p, extensions)}
    return sorted((p, i.get("size")) for p, i in entries.items() if i.get("type") == "file")


def _wanted(path: str, extensions: list[str] | None) -> bool:
    return extensions is None or posixpath.splitext(path)[1].lower() in {
        e.lower() for e in extensions}


def _walk_local(root: str, extensions: list[str] | None) -> list[tuple[str, int | None]]:
    """The local listing: regular files with their size; everything else that could be an
    input with ``None``.

    * a folder the walk cannot open (no permission, a path over PATH_MAX) is listed itself,
      whatever its name, so the build records it instead of losing what it holds;
    * a symbolic link is listed by what it points at: a file with its size (whether it may be
      read is decided at read time), nothing for a directory (``up -> ..`` would loop forever),
      unknown for a broken link or a loop;
    * a FIFO, socket or device named like an image is listed so it gets a row; it is never
      opened.
    """
    found: list[tuple[str, int | None]] = []
    try:
        top = os.lstat(root)
    except OSError:
        return [(root, None)]  # gone, or not ours to see: reading it says why
    if not stat.S_ISDIR(top.st_mode):
        if stat.S_ISLNK(top.st_mode) and os.path.isdir(root):
            return _walk_local(os.path.realpath(root), extensions)
        return [(root, top.st_size if stat.S_ISREG(top.st_mode) else None)]

    def unreadable(exc: OSError) -> None:
        found.append((exc.filename if isinstance(exc.filename, str) else root, None))

    for folder, subfolders, names in os.walk(root, onerror=unreadable):
        for name in subfolders:  # os.walk lists links to folders here: not followed
            path = os.path.join(folder, name)
            if os.path.islink(path) and not os.path.exists(path) and _wanted(path, extensions):
                found.append((path, None))  # a broken link or a loop: a row, not a folder
        for name in names:
            path = os.path.join(folder, name)
            if not _wanted(path, extensions):
                continue
            try:
                info = os.lstat(path)
            except OSError:  # ENAMETOOLONG and friends: the read will say which
                found.append((path, None))
                continue
            if stat.S_ISLNK(info.st_mode):
                try:
                    info = os.stat(path)  # what it points at (stat opens nothing)
                except OSError:  # broken, a loop: the read says which
                    found.append((path, None))
                    continue
                if stat.S_ISDIR(info.st_mode):
                    continue
            found.append((path, info.st_size if stat.S_ISREG(info.st_mode) else None))
    return sorted(set(found))


def list_files(loc: Location, extensions: list[str] | None = None) -> list[str]:
    return [path for path, _ in list_file_sizes(loc, extensions)]


class OutsideInput(PermissionError):
    """A symbolic link that leads out of the location it was listed in: never opened."""


class UnlistableFolder(IsADirectoryError):
    """A folder the listing could not walk into, listed so that it gets a row."""


class NotRegularFile(OSError):
    """A FIFO, socket, device or kernel pseudo-file: never opened (it may block or leak)."""


# Kernel pseudo-filesystems: their files look regular but are views of the running system.
_PSEUDO = ("/proc/", "/sys/", "/dev/")


def read_input(
    loc: Location, path: str, max_bytes: int | None = None, follow_links_outside: bool = False
) -> bytes:
    """Read one listed input (a portrait, a background) without reading anything else.

    On a local disk the file must resolve inside ``loc.root`` (unless
    ``follow_links_outside``), must be a regular file and not a kernel pseudo-file; all of
    that is decided from ``stat`` before the file is opened, then checked again on the open
    descriptor, so neither a link to ``/etc/passwd`` nor a FIFO is ever opened.  Other
    filesystems have no links and no special files: :func:`read_bytes`.
    """
    if not is_local(loc):
        return read_bytes(loc, path, max_bytes)
    return with_retries(lambda: _read_local_input(loc, path, max_bytes, follow_links_outside),
                        loc.retry)


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


def _read_local_input(
    loc: Location, path: str, max_bytes: int | None, follow_outside: bool
) -> bytes:
    real = os.path.realpath(path)
    root = os.path.realpath(loc.root)
    if not follow_outside and not _inside(real, root):
        raise OutsideInput(errno.EACCES, f"a symbolic link to {real}, outside the input "
                           f"{root}; not read (set input.follow_links_outside to allow)", path)
    if real.startswith(_PSEUDO) and not _inside(real, root):
        raise NotRegularFile(errno.EINVAL, f"{real} is a kernel pseudo-file", path)
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise UnlistableFolder(errno.EISDIR, "a folder the build could not list", path)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(errno.EINVAL, f"a {_kind(info.st_mode)}, not a regular file", path)
    if max_bytes is not None and info.st_size > max_bytes:
        raise FileTooLarge(f"file is {info.st_size} bytes, over the limit of {max_bytes}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
                info.st_dev, info.st_ino):
            raise NotRegularFile(errno.EINVAL, "the file changed while it was opened", path)
        data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise FileTooLarge(f"file is over the limit of {max_bytes} bytes")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


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
    An error that outlasts the retries is raised as :class:`WriteFailed`.
    """
    try:
        with_retries(lambda: _write_once(loc, path, data), loc.retry)
    except WriteFailed:
        raise
    except OSError as exc:
        raise WriteFailed(exc.errno, f"could not write {path}: {exc.strerror or exc}") from exc


class WriteFailed(OSError):
    """A write the storage refused or lost (a full disk, a timeout, a store that is down).

    The machine's failure, not the input's: rows that meet it are ``write_error``, which the
    next incremental build redoes and which make the build exit non-zero.
    """


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


def printable(text: str) -> str:
    """``text`` as valid UTF-8: bytes a file name holds that are not UTF-8 become ``\\xNN``.

    Linux allows any bytes in a name; Python hands them over as lone surrogates, which Parquet,
    JSON and logs refuse.  The form is stable, so a rerun keys the same row on it.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from undecodable bytes
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


_WIRE = "b64:"  # no listed path starts so: local ones start with "/", bucket names hold no ":"


def wire_path(path: str) -> str:
    """A listed path as plain UTF-8 text, to travel in flow parameters and shard keys.

    Valid UTF-8 paths travel as they are; others as base64 of their bytes, so the worker
    opens exactly the file that was listed.  :func:`unwire_path` undoes it.
    """
    if printable(path) == path:
        return path
    return _WIRE + base64.urlsafe_b64encode(path.encode("utf-8", "surrogateescape")).decode()


def unwire_path(text: str) -> str:
    if not text.startswith(_WIRE):
        return text
    return base64.urlsafe_b64decode(text[len(_WIRE):]).decode("utf-8", "surrogateescape")
