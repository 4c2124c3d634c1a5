# -*- test-case-name: tests.test_maildir_uidlist -*-
"""Locks that serialise changes to a Maildir folder's UID list, keyword file
and delivery journal (the Maildir step of the flow).

L{FolderLock} takes ``fcntl.flock`` on a lock file.  Each acquisition opens
its own file description, so the lock excludes other threads of this process
as well as other processes.  The kernel drops the lock when its holder exits
or is killed, so there is no stale lock to recover.

NFS caveat: ``flock`` is local to one host on old Linux kernels and on some
NFS setups (Linux since 2.6.12 emulates it with POSIX byte-range locks over
NFSv3/v4, which does work between hosts when the server's lock manager is
running).  Folders shared by several hosts over NFS need a working lockd;
the renames that publish the UID list are atomic there too.
"""

from __future__ import annotations

import fcntl
import os
from types import TracebackType

__all__ = ["FolderLock"]


class FolderLock:
    """An exclusive lock on a lock file, usable as a context manager.

    @param path: the lock file; created (mode 0600) when missing and never
        removed (removing it would let two holders lock different inodes).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock.

        @param blocking: wait for it (True) or give up at once (False).
        @return: True when the lock is held, False when non-blocking and
            someone else holds it.
        @raise RuntimeError: when this object already holds it.
        """
        if self._fd is not None:
            raise RuntimeError("lock already held")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lock up (closing the descriptor drops the flock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
