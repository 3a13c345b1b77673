"""The store lock (SPEC 3, 4): writers hold it exclusively, readers share it.

``fcntl.flock`` on a lock file in the store. flock locks belong to an open file description, so
every ``StoreLock`` opens the file itself: two locks in one process exclude each other just as two
processes do, and the kernel drops a lock when its holder dies, so a crash never leaves the store
locked.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from erase_cli.errors import InvalidParameter, StoreDamaged, StoreLocked, StoreMissing, StoreNotWritable

POLL_SECONDS = 0.05


class StoreLock:
    """Context manager holding a shared or exclusive flock on ``path`` (the store's lock file).

    Tries without blocking every ~50 ms until ``timeout`` seconds have passed (0: one attempt),
    calls ``on_wait`` once with a message for people when the first attempt fails and there is time
    to wait, and raises StoreLocked past the timeout.
    """

    def __init__(
        self,
        path: Path,
        *,
        shared: bool,
        timeout: float,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        if not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
            raise InvalidParameter(f"--lock-timeout must be a number of seconds >= 0, not {timeout!r}")
        self.path = Path(path)
        self.store = self.path.parent
        self.shared = shared
        self.timeout = float(timeout)
        self.on_wait = on_wait
        self._fd: int | None = None
        self._entered = False

    def __enter__(self) -> StoreLock:
        if self._entered:
            raise RuntimeError(f"the lock on {self.store} is already held by this StoreLock")
        self._fd = self._open()
        if self._fd is not None:
            try:
                self._acquire(self._fd)
            except BaseException:
                os.close(self._fd)
                self._fd = None
                raise
        self._entered = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            # Closing the only descriptor of this open file description releases the lock.
            os.close(self._fd)
            self._fd = None
        self._entered = False

    def _open(self) -> int | None:
        """A descriptor for the lock file, or None for a reader of a store without one.

        Readers never create the file (a read-only command writes nothing, even in a directory
        that is not a store); writers create it owner-only. A symbolic link is never followed."""
        if not self.store.is_dir():
            hint = "is not a directory" if self.store.exists() else "does not exist"
            raise StoreMissing(
                f"store {self.store} {hint}; create one with 'erase ingest FILE --store {self.store}' "
                "or point --store / ERASE_STORE at an existing store"
            )
        flags = os.O_NOFOLLOW | (os.O_RDONLY if self.shared else os.O_RDWR | os.O_CREAT)
        try:
            fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            # Without a lock file no erase command has ever written this directory, so a reader
            # has nobody to exclude (and a directory that is no store is reported as such later).
            return None
        except PermissionError:
            # flock needs no write access, so an existing lock file serves a read-only store too.
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                raise StoreNotWritable(
                    f"cannot open the lock file {self.path} of store {self.store}; make the store "
                    f"readable and writable by its owner (chmod u+rwx {self.store})"
                ) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise StoreDamaged(
                    f"damaged store: the lock file {self.path} is not a regular file (a directory or "
                    f"a link); remove it ('rm -r {self.path}') and run the command again"
                ) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreDamaged(
                f"damaged store: the lock file {self.path} is not a regular file; remove it "
                f"('rm -r {self.path}') and run the command again"
            )
        return fd

    def _acquire(self, fd: int) -> None:
        operation = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + self.timeout
        warned = False
        while True:
            try:
                fcntl.flock(fd, operation)
                return
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreLocked(
                    f"store {self.store} is locked by another erase command "
                    f"(waited {self.timeout:g} s); retry later or raise --lock-timeout"
                )
            if not warned and self.on_wait is not None:
                self.on_wait(
                    f"waiting for the lock on {self.store} (held by another erase command); up to {self.timeout:g} s"
                )
            warned = True
            time.sleep(min(POLL_SECONDS, remaining))
