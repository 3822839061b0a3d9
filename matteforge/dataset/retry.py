"""Retry storage calls that fail for a moment: a dropped connection, a timeout, a 503.

Object stores and network filesystems fail transiently often enough that a build of thousands
of files meets such errors; without a retry each one costs a failed row (or a failed shard, when
it hits a manifest write).  Only errors that can go away by themselves are retried:
``FileNotFoundError``, ``PermissionError`` and friends are answers, not accidents, and retrying
them would only delay the row that reports them.  Waits grow exponentially up to a cap, so a
store that stays down ends the call after a bounded time with the last error, never a hang.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
PERMANENT: tuple[type[BaseException], ...] = (
    FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
)
# Plain OSErrors that are answers too: a loop of links, a name too long, a full or read-only disk.
PERMANENT_ERRNOS = frozenset({errno.ELOOP, errno.ENAMETOOLONG, errno.EINVAL, errno.ENOSPC,
                              errno.EROFS, errno.EDQUOT})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one storage call is tried (see ``RunConfig.io_*``)."""

    attempts: int = 3
    backoff: float = 0.5  # seconds before the second attempt; doubled before each next one
    max_backoff: float = 8.0

    def delays(self) -> list[float]:
        """The waits between attempts: ``backoff * 2**i``, capped at ``max_backoff``."""
        return [min(self.backoff * 2**i, self.max_backoff) for i in range(self.attempts - 1)]


DEFAULT_POLICY = RetryPolicy()


def is_transient(exc: BaseException) -> bool:
    return (isinstance(exc, TRANSIENT) and not isinstance(exc, PERMANENT)
            and getattr(exc, "errno", None) not in PERMANENT_ERRNOS)


def with_retries(
    call: Callable[[], T], policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, tried again after each transient error; the last error is raised as is."""
    delays = policy.delays()
    for delay in delays:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
        sleep(delay)
    return call()
