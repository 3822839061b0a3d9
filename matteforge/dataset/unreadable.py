"""Why a listed file could not be read, as a manifest reason code and a sentence.

A listing can name files that cannot be opened: a broken symbolic link, a loop of links, a file
deleted since the listing, one we may not read.  Each becomes a row whose reason says which, so
the person fixing the collection knows what to do without reading a traceback.
"""

from __future__ import annotations

import errno

from matteforge.dataset.storage import (
    FileTooLarge,
    NotRegularFile,
    OutsideInput,
    UnlistableFolder,
    printable,
)

_ADVICE = {
    "not_found": "no such file: a broken symbolic link, or the file was removed after listing",
    "symlink_loop": "symbolic links that point at each other in a loop",
    "permission_denied": "the build may not read this file",
    "is_a_directory": "a directory, not a file",
    "unreadable_folder": "a folder the build could not list, so its files were not read",
    "path_too_long": "the path is longer than the system allows (PATH_MAX); shorten the "
    "folder names",
    "read_error": "the storage failed while reading; a later build retries it",
}
# Failures of the machine or the store, not of the input: the next incremental build redoes
# them by itself, and a build that made any exits non-zero (docs/inputs.md).
MACHINE_REASONS = frozenset({"read_error", "write_error", "storage_error"})


def read_failure(exc: BaseException) -> tuple[str, str, str]:
    """(status, reason, detail) for an exception raised while reading a listed input.

    A file over ``ingest.max_bytes`` is ``rejected`` (the collection is fine, the limit refused
    it), like an image over ``max_pixels``; anything else that stops the read is ``failed``.
    """
    if isinstance(exc, FileTooLarge):
        return "rejected", "too_large", str(exc)
    if isinstance(exc, OutsideInput):
        return "rejected", "outside_input", exc.strerror or str(exc)
    if isinstance(exc, NotRegularFile):
        return "rejected", "not_a_regular_file", f"never opened: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError):
        reason = "not_found"
    elif isinstance(exc, PermissionError):
        reason = "permission_denied"
    elif isinstance(exc, UnlistableFolder):
        reason = "unreadable_folder"
    elif isinstance(exc, IsADirectoryError):
        reason = "is_a_directory"
    elif isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        reason = "symlink_loop"
    elif isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        reason = "path_too_long"
    else:
        reason = "read_error"
    raw = printable(f"{type(exc).__name__}: {exc}")
    detail = f"{_ADVICE[reason]} ({raw})" if reason in _ADVICE else raw
    return "failed", reason, detail[:2000]
