"""Which fit a long-running reader serves: the store's generation, read without the lock.

Every writer replaces manifest.json and store.json by rename (store.Journal.apply: store.json,
then manifest.json last), never in place, so a file's (inode, mtime_ns, ctime_ns, size) changes
whenever a writer replaced it. `stamp()` is those two stats: the check an Answerer makes before
every answer, a few microseconds. `read()` reads the two files, without the lock, only when the
stamp moved: a long write (a forget streaming a refit) therefore never stalls answering. That is
safe because a write changes live files only in its short apply phase, after its commit point,
and `read()` keeps a pair only when it is consistent:

- the manifest's bytes match the sha256 that store.json holds for them, under store.json's keyed
  mac (a reader between a commit's two renames sees a mismatch), and
- the stamp is the same after the read as before it (the bytes are those of the stamped inode).

It retries a few times, then reads under the shared lock, which reads through a pending journal
(a writer that died between the two renames) and reports real damage.

Stats must see a rename at once: keep the store on a local filesystem (an NFS client caches file
attributes for seconds).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreDamaged, StoreMissing
from .schema import FitMeta, Manifest
from .store import MANIFEST, STORE_JSON, Store, open_store

FileStamp = tuple[int, int, int, int]  # st_ino, st_mtime_ns, st_ctime_ns, st_size
Stamp = tuple[FileStamp | None, FileStamp | None]  # manifest.json, store.json

ATTEMPTS = 50  # lockless reads before reading under the lock
RETRY_SECONDS = 0.002  # a commit's two renames are microseconds apart


@dataclass(frozen=True, order=True)
class Generation:
    """One manifest.json as written: its mtime, its fit's state digest and its inode. Every
    commit that touches the fit writes a new file, so a forget always makes a new generation,
    even one that leaves the fitted state as it was.

    The string form `{mtime_ns:016x}-{state_digest[:12]}-{inode:x}` leads with the fixed-width
    mtime, so a later generation of a store sorts after an earlier one (on a machine whose clock
    does not step back)."""

    mtime_ns: int
    state_digest: str
    inode: int

    def __str__(self) -> str:
        return f"{self.mtime_ns:016x}-{self.state_digest[:12]}-{self.inode:x}"


@dataclass(frozen=True)
class Snapshot:
    """The store's fit at one generation, as a reader needs it to answer."""

    stamp: Stamp
    fit: FitMeta | None  # None: the store has no fit
    manifest: Manifest | None  # present exactly when `fit` is
    generation: Generation | None
    dim: int | None  # the stored embeddings' dimension
    embedder: str | None


def _file_stamp(path: Path) -> FileStamp | None:
    try:
        s = os.lstat(path)
    except FileNotFoundError:
        return None
    return (s.st_ino, s.st_mtime_ns, s.st_ctime_ns, s.st_size)


def stamp(root: Path) -> Stamp:
    """What changes whenever a writer replaces the fit or store.json: two stats, no lock."""
    return (_file_stamp(root / MANIFEST), _file_stamp(root / STORE_JSON))


def read(
    root: Path,
    *,
    key_file: Path | None = None,
    lock_timeout: float = 60.0,
    on_message: Callable[[str], None] | None = None,
) -> Snapshot:
    """The store's current fit. `root` is the resolved store directory (open_store's `st.root`)."""
    for _ in range(ATTEMPTS):
        before = stamp(root)
        try:
            snapshot = _snapshot(Store(root, writable=False, key_file=key_file), before, before[0])
        except (StoreDamaged, StoreMissing):
            snapshot = None  # a pair from two commits; or real damage, which the locked read reports
        if snapshot is not None and stamp(root) == before:
            return snapshot
        time.sleep(RETRY_SECONDS)
    with open_store(root, write=False, lock_timeout=lock_timeout, on_message=on_message, key_file=key_file) as st:
        return read_locked(st)


def read_locked(st: Store) -> Snapshot:
    """The snapshot of a store opened with its lock held (by open_store)."""
    # Through a pending journal the manifest may still be its staged file; renaming it into
    # place keeps its inode and mtime, so the generation is already the final one.
    path = st.resolve(MANIFEST)
    return _snapshot(st, stamp(st.root), None if path is None else _file_stamp(path))


def _snapshot(st: Store, at: Stamp, manifest_stamp: FileStamp | None) -> Snapshot:
    meta = st.meta
    manifest, generation = None, None
    if meta.fit is not None:
        manifest = st.manifest()  # checked against store.json's checksum of it
        if manifest is None or manifest_stamp is None:
            raise StoreDamaged(f"damaged store: {st.root / MANIFEST} is missing; run 'erase fit' to rewrite it")
        inode, mtime_ns = manifest_stamp[0], manifest_stamp[1]
        generation = Generation(mtime_ns, manifest.state_digest, inode)
    return Snapshot(at, meta.fit, manifest, generation, meta.dim, meta.embedder)
