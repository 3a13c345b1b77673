"""The on-disk store: the only module that imports zarr.

Layout (docs/DESIGN.md): store.json, secret, records.zarr/{ids,idh,data,emb}, index/XX.npy,
forgotten.json, fit/state.npz, manifest.json, audit.jsonl, cache/, journal/, lock.

Every change goes through a Transaction: new files (whole small files, or rewritten zarr chunks)
are staged under journal/files/, then journal/journal.json is written atomically (the commit
point), then staged files are renamed over their targets (manifest.json last) and the journal is
removed. A writer that finds a committed journal completes it; an uncommitted one is deleted. A
reader that finds a committed journal reads through it (the overlay) without changing anything.

Forgotten rows keep their slot, but every chunk that held them is rewritten with the slot empty,
so their bytes are physically gone (renaming over a file drops the old inode).

Integrity (format 2): store.json carries an HMAC made with the store's key and the sha256 of every
small file, so an edit, a deleted file or a planted value is "damage", never read as "absent".
Every zarr chunk of the written rows exists on disk (empty ones included), so a missing chunk is
damage too. Paths read from store files are checked against the names the format allows, and no
symbolic link inside the store is ever followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import io
import itertools
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from . import audit, interrupts
from .durable import atomic_write, fsync_path
from .errors import (
    DiskFull,
    EraseError,
    InsecureKey,
    KeyMismatch,
    StoreDamaged,
    StoreMissing,
    StoreNotWritable,
    StoreTooNew,
)
from .lock import StoreLock
from .schema import STORE_FORMAT as FORMAT
from .schema import STORE_FORMAT_VERSION as FORMAT_VERSION
from .schema import FitMeta, Manifest, StoreMeta  # noqa: F401  (the store's schema, re-exported)

CHUNK_ROWS = 1024
SYNCFS_OVER = 64  # files to make durable at once above which one syncfs replaces the fsyncs
FILE_THREADS = 8  # renames and removals in flight at once (they wait on the disk, not the CPU)
# Embedding chunks are smaller: a batch of scattered ids rewrites every chunk it touches, and
# 256 x 384 float32 (384 KB) keeps those rewrites ~3x smaller than 1,024-row chunks would.
EMB_CHUNK_ROWS = 256
GROUP_CHUNKS = 128  # most chunks one zarr call rewrites (128 x 384 KB of 384-d embeddings)
ARRAYS = ("ids", "idh", "data", "emb")
INDEX_DTYPE = np.dtype([("idh", "<u8"), ("row", "<i8")])

STORE_JSON = "store.json"
MANIFEST = "manifest.json"
STATE = "fit/state.npz"
INDEX_DIR = "index"
INDEX_SHARDS = 256
FORGOTTEN = "forgotten.json"
AUDIT = "audit.jsonl"
SECRET = "secret"
CACHE_DIR = "cache"
JOURNAL_DIR = "journal"
LOCK = "lock"
ACTIONS = frozenset({"ingest", "fit", "forget", "upgrade", "export"})

# The only names a journal may replace or delete: a planted journal.json can name nothing else,
# so it can never reach outside the store (no "..", no absolute path, no unknown file).
_ARRAY = "(?:ids|idh|data|emb)"
_CHUNK = rf"records\.zarr/{_ARRAY}/c(?:/[0-9]{{1,12}}){{1,2}}"
_INDEX_FILE = r"index/[0-9a-f]{2}\.npy"
_REPLACEABLE = re.compile(
    rf"(?:store\.json|secret|manifest\.json|forgotten\.json|fit/state\.npz|{_INDEX_FILE}"
    rf"|records\.zarr/zarr\.json|records\.zarr/{_ARRAY}/zarr\.json|{_CHUNK})"
)
_CACHE_FILE = r"cache/[0-9a-f]{64}-[0-9a-f]{16}\.kv"  # answer.cache_file_name: prompt digest, model id
_DELETABLE = re.compile(rf"(?:cache|{_CACHE_FILE}|{_INDEX_FILE}|{_CHUNK})")
_IS_CHUNK = re.compile(_CHUNK)
_DELETABLE_CACHE = re.compile(_CACHE_FILE)
# Known places checked for symbolic links when a store is opened (a few lstat calls); deeper
# paths (chunk directories) are checked as they are used.
_LAYOUT = (
    STORE_JSON,
    SECRET,
    MANIFEST,
    FORGOTTEN,
    AUDIT,
    "fit",
    STATE,
    INDEX_DIR,
    CACHE_DIR,
    JOURNAL_DIR,
    f"{JOURNAL_DIR}/files",
    f"{JOURNAL_DIR}/journal.json",
    "records.zarr",
    "records.zarr/zarr.json",
    *(f"records.zarr/{a}{sub}" for a in ARRAYS for sub in ("", "/zarr.json", "/c")),
)

Message = Callable[[str], None]
_test_point = interrupts.test_point


def _dumps(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def meta_mac(key: bytes, meta: dict) -> str:
    """HMAC of store.json's content (without its own mac): a plain checksum inside the file could
    be recomputed by whoever edits it, a keyed one cannot."""
    body = {k: v for k, v in meta.items() if k != "mac"}
    return hmac.new(key, b"erase-store.json\0" + audit.canonical(body), hashlib.sha256).hexdigest()


def key_fingerprint(key: bytes) -> str:
    """Names a key without revealing it: the store records it to refuse a wrong --secret-file."""
    return hmac.new(key, b"erase-key-fingerprint", hashlib.sha256).hexdigest()[:32]


def _damaged_missing(path: Path) -> StoreDamaged:
    return StoreDamaged(f"damaged store: {path} is missing; restore the store from a backup")


def _link_error(path: Path) -> StoreDamaged:
    return StoreDamaged(
        f"damaged store: {path} is a symbolic link; erase never follows links inside "
        "a store (replace it with the real file or directory from a backup)"
    )


def _check_link_free(root: Path, rel: str, checked: set[str] | None = None) -> bool:
    """Whether root/rel exists, after checking that neither it nor any directory on the way is a
    symbolic link (StoreDamaged if one is). `checked` caches directories already seen. Plain
    strings, not pathlib: a big batch checks thousands of chunk paths."""
    base = os.fspath(root)
    end = -1
    while True:
        end = rel.find("/", end + 1)
        sub = rel if end < 0 else rel[:end]
        if end < 0 or checked is None or sub not in checked:
            path = f"{base}/{sub}"
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise _os_error(exc, Path(path)) from None
            if stat.S_ISLNK(mode):
                raise _link_error(Path(path))
            if end >= 0 and checked is not None:
                checked.add(sub)
        if end < 0:
            return True


def _read_nofollow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _sync_all(root: Path, paths: list[Path]) -> None:
    """Make `paths` (files and directories) durable: one fsync each, or, for many, a single
    syncfs of the store's filesystem, which costs far less than thousands of fsyncs."""
    if len(paths) > SYNCFS_OVER and _syncfs(root):
        return
    for path in paths:
        fsync_path(path)


def _syncfs(root: Path) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(root, os.O_RDONLY)
        try:
            return libc.syncfs(fd) == 0
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return False


def _os_error(exc: OSError, path: Path) -> EraseError:
    if isinstance(exc, EraseError):
        return exc
    if exc.errno == errno.ENOSPC:
        return DiskFull(
            f"no space left on the device while writing {path}; free space and retry (the store was left unchanged)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreNotWritable(
            f"cannot write {path}: {exc.strerror}; fix the permissions (the store was left unchanged)"
        )
    if exc.errno == errno.ELOOP:
        return _link_error(path)
    if exc.errno in (errno.EISDIR, errno.ENOTDIR):
        return StoreDamaged(
            f"damaged store: {path} is not what the store format expects "
            f"({exc.strerror}); restore the store from a backup"
        )
    return StoreDamaged(f"cannot access {path}: {exc.strerror or exc}; restore the store from a backup")


@contextlib.contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    """Turn an OSError from staging (disk full, permission denied) into the typed error, so a
    writer that fails part-way reports one line; its caller aborts the transaction."""
    try:
        yield
    except EraseError:  # StoreDamaged and DiskFull are OSErrors too: already typed
        raise
    except OSError as exc:
        raise _os_error(exc, path) from None


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds too narrowly
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- journal


@dataclass
class Journal:
    """A committed transaction: staged files replace their targets, `deletes` are removed."""

    action: str
    replaces: list[str]
    deletes: list[str]
    audit_entry: dict | None

    @classmethod
    def read(cls, root: Path) -> Journal | None:
        path = root / JOURNAL_DIR / "journal.json"
        try:
            raw = orjson.loads(_read_nofollow(path))
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError as exc:
            # journal.json is written atomically, so a torn one means outside damage.
            raise StoreDamaged(
                f"damaged store: the journal {path} is unreadable ({exc}); restore the store from a backup"
            ) from None
        except OSError as exc:
            raise _os_error(exc, path) from None
        return cls.validated(raw, path)

    @classmethod
    def validated(cls, raw, path: Path) -> Journal:
        """Only what the format allows: a known action, and relative names of the store's own
        files (so a planted journal can neither write nor delete anything outside the store)."""

        def bad(what: str) -> StoreDamaged:
            return StoreDamaged(
                f"damaged store: the journal {path} {what}; nothing was changed "
                "(remove the journal directory only if you know it was planted, "
                "or restore the store from a backup)"
            )

        if not isinstance(raw, dict) or raw.get("action") not in ACTIONS:
            raise bad("has no known action")
        replaces, deletes, entry = raw.get("replaces"), raw.get("deletes"), raw.get("audit")
        for name, items, pattern in (("replaces", replaces, _REPLACEABLE), ("deletes", deletes, _DELETABLE)):
            if not isinstance(items, list):
                raise bad(f"has no list of files to {name[:-1]}")
            for rel in items:
                if not isinstance(rel, str) or not pattern.fullmatch(rel):
                    raise bad(f"names {rel!r}, which is not a file of the store format")
        if entry is not None and not isinstance(entry, dict):
            raise bad("holds an audit entry that is not an object")
        assert isinstance(replaces, list) and isinstance(deletes, list)  # checked above
        return cls(raw["action"], list(replaces), list(deletes), entry)

    def apply(self, root: Path, key: bytes | None) -> None:
        """Idempotent: a replay after a crash part-way through gives the same result. `key` is
        the store's key (None for a format-1 store): the audit entry must verify with it before
        anything is touched."""
        if self.audit_entry is not None:
            try:
                genuine = audit.entry_hash(self.audit_entry, key) == self.audit_entry.get("hash")
            except (TypeError, ValueError):
                genuine = False
            if not genuine:
                raise StoreDamaged(
                    f"damaged store: the journal in {root / JOURNAL_DIR} holds an audit "
                    "entry that does not verify with the store's key; nothing was "
                    "changed (restore the store from a backup)"
                )
        staged_root = root / JOURNAL_DIR / "files"
        dirs: set[Path] = set()
        checked: set[str] = set()
        for rel in self.deletes:
            target = root / rel
            if _check_link_free(root, rel, checked):
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        target.unlink()
            dirs.add(target.parent)
        done = itertools.count(1)

        def replace(rel: str) -> Path | None:
            staged = staged_root / rel
            target = root / rel
            moved = None
            if _check_link_free(root, f"{JOURNAL_DIR}/files/{rel}", checked):
                _check_link_free(root, rel, checked)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
                moved = target.parent
            _test_point(f"apply:{next(done)}")
            return moved

        # Chunks and the other files in any order, several at once: a rename over a file frees
        # the old one's blocks, and the kernel overlaps that work (a batch renames thousands of
        # chunks; one at a time took ~1-2 ms each here). store.json and manifest.json come
        # after all of them, in the journal's order (manifest.json last).
        bulk = [rel for rel in self.replaces if rel not in _LAST]
        with ThreadPoolExecutor(max_workers=FILE_THREADS) as pool:
            dirs.update(d for d in pool.map(replace, bulk) if d is not None)
        for rel in self.replaces:
            if rel in _LAST:
                moved = replace(rel)
                if moved is not None:
                    dirs.add(moved)
        _sync_all(root, [d for d in dirs if d.exists()])
        _test_point("applied")
        if self.audit_entry is not None and not audit.contains_tail(root / AUDIT, self.audit_entry):
            audit.append(root / AUDIT, self.audit_entry, key=key)
        _test_point("audited")
        _empty_tree(staged_root)
        shutil.rmtree(root / JOURNAL_DIR)
        fsync_path(root)


def _empty_tree(top: Path) -> None:
    """Remove what lies under `top`, many entries at once (the staged chunk directories of a big
    batch: thousands of rmdirs). Best effort: whatever is left (a link, a race) is removed by the
    shutil.rmtree that follows."""
    files: list[str] = []
    levels: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        files += [os.path.join(dirpath, f) for f in filenames]
        levels.setdefault(dirpath.count(os.sep), []).extend(os.path.join(dirpath, d) for d in dirnames)

    def remove(path: str, how: Callable[[str], None]) -> None:
        with contextlib.suppress(OSError):
            how(path)

    with ThreadPoolExecutor(max_workers=FILE_THREADS) as pool:
        list(pool.map(remove, files, [os.unlink] * len(files)))
        for depth in sorted(levels, reverse=True):  # the deepest directories first
            list(pool.map(remove, levels[depth], [os.rmdir] * len(levels[depth])))


_LAST = (STORE_JSON, MANIFEST)
# The codecs of arrays whose chunks Transaction._zero_rows patches in place (emb, idh), and the
# chunk key encoding it knows.
_RAW_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
_CHUNK_KEYS = {"name": "default", "configuration": {"separator": "/"}}


def _crc32c(data: np.ndarray) -> bytes:
    """The checksum zarr's crc32c codec appends: crc32c of the bytes, as a native uint32."""
    import google_crc32c  # zarr's own dependency for this codec

    return np.uint32(google_crc32c.value(data)).tobytes()


def _order(rels: list[str]) -> list[str]:
    """manifest.json last and store.json just before it: a reader that sees the new manifest
    sees everything it refers to."""
    rank = {STORE_JSON: 1, MANIFEST: 2}
    return sorted(rels, key=lambda r: (rank.get(r, 0), r))


# --------------------------------------------------------------------------- store


def _read_key(path: Path, *, follow: bool) -> bytes:
    """A key file's bytes, refused when others may read it (as ssh refuses a private key)."""
    try:
        fd = os.open(path, os.O_RDONLY | (0 if follow else os.O_NOFOLLOW))
    except FileNotFoundError:
        raise (
            KeyMismatch(f"key file {path} does not exist; pass the key file the store was created with")
            if follow
            else _damaged_missing(path)
        ) from None
    except OSError as exc:
        raise _os_error(exc, path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise KeyMismatch(f"key file {path} is not a regular file")
        if mode & 0o077:
            raise InsecureKey(
                f"key file {path} is accessible by group or others (mode "
                f"{stat.S_IMODE(mode):04o}); run 'chmod 600 {path}'"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(4096)
    finally:
        os.close(fd)


def read_key_file(path: Path) -> bytes:
    """An external key (--secret-file): 32 raw bytes, or 64 hex digits (a trailing newline is
    fine), e.g. from `head -c 32 /dev/urandom > KEY` or `openssl rand -hex 32 > KEY`."""
    data = _read_key(Path(path), follow=True)
    text = data.strip()
    if len(text) == 64:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(text.decode("ascii"))
    if len(data) == 32:
        return data
    raise KeyMismatch(
        f"key file {path} must hold 32 random bytes or 64 hex digits; create one with 'openssl rand -hex 32 > {path}'"
    )


class Store:
    """An opened store. Use `open_store`; reads are overlay-aware when a commit is pending."""

    def __init__(self, root: Path, *, writable: bool, key_file: Path | None = None):
        self.root = root
        self.writable = writable
        self.key_file = key_file
        self.pending: Journal | None = None
        self.recovered: dict | None = None  # what opening for writing did with a found journal
        self._key: bytes | None = None
        self._checked: set[str] = set()  # directories known not to be symbolic links
        self.reload()

    @classmethod
    def worker_view(cls, root: Path, meta: StoreMeta) -> Store:
        """A read-only view of the records for a Dask worker of a fit whose client holds the
        store's lock and opened it with the key: the worker takes no lock (the client's keeps every
        writer out) and needs no key, since it trusts the store.json the client checked, against
        which it still checks every array's metadata."""
        view = cls(root, writable=False)
        view._meta = meta
        return view

    def reload(self) -> None:
        """Forget what was read (after a commit changed the files)."""
        self._meta: StoreMeta | None = None
        self._index: np.ndarray | None = None
        self._shards: dict[int, np.ndarray] = {}
        self._arrays: dict = {}

    # ---- files
    def resolve(self, rel: str) -> Path | None:
        """Where `rel` lives in the last consistent state (through a pending journal); None when
        absent. Raises StoreDamaged if the path goes through a symbolic link."""
        if self.pending is not None:
            if rel in self.pending.deletes or any(rel.startswith(d + "/") for d in self.pending.deletes):
                return None
            if rel in self.pending.replaces and _check_link_free(
                self.root, f"{JOURNAL_DIR}/files/{rel}", self._checked
            ):
                return self.root / JOURNAL_DIR / "files" / rel
        return self.root / rel if _check_link_free(self.root, rel, self._checked) else None

    def raw_bytes(self, rel: str) -> bytes | None:
        """A file's bytes as they are (through a pending journal, no link followed), unchecked:
        for files store.json holds no checksum of (chunks) or that are being checksummed."""
        path = self.resolve(rel)
        if path is None:
            return None
        try:
            return _read_nofollow(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, path) from None

    def read_bytes(self, rel: str) -> bytes | None:
        """A small file's bytes, checked against the sha256 store.json records for it. A file the
        store records but that is gone is damage, never "absent"."""
        data = self.raw_bytes(rel)
        want = self.meta.checksums.get(rel)
        if data is None:
            if want is not None:
                raise _damaged_missing(self.root / rel)
            return None
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            raise StoreDamaged(
                f"damaged store: {self.root / rel} does not match its checksum (edited "
                "or damaged); restore the store from a backup, or run 'erase fit' if "
                "only the fit is affected"
            )
        return data

    @property
    def meta(self) -> StoreMeta:
        if self._meta is None:
            path = self.root / STORE_JSON
            raw = self.raw_bytes(STORE_JSON)
            if raw is None:
                raise StoreMissing(f"no store at {self.root}; create one with 'erase ingest FILE.jsonl'")
            try:
                meta = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise StoreDamaged(f"damaged store: {path} is unreadable; restore the store from a backup") from None
            if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
                raise StoreDamaged(f"damaged store: {path} is not an erase store file; restore it from a backup")
            if meta["format_version"] > FORMAT_VERSION:
                raise StoreTooNew(
                    f"store {self.root} has format version {meta['format_version']}, "
                    f"newer than this erase understands ({FORMAT_VERSION}); upgrade erase"
                )
            if meta["format_version"] >= 2:
                key = self._load_key(meta.get("key"))
                mac = meta.get("mac")
                if not isinstance(mac, str) or not hmac.compare_digest(mac, meta_mac(key, meta)):
                    raise StoreDamaged(
                        f"damaged store: {path} does not match its keyed checksum "
                        "(edited outside erase); restore the store from a backup"
                    )
            self._meta = StoreMeta.parse(meta, path)
        return self._meta

    @property
    def format_version(self) -> int:
        return self.meta.format_version

    @property
    def exists(self) -> bool:
        return self.resolve(STORE_JSON) is not None

    def key(self) -> bytes:
        """The store's HMAC key (audit chain, id hashes, store.json), from its secret file or,
        for a store created with --secret-file, from that file, checked by fingerprint."""
        return self._load_key(self.meta.key)

    def _load_key(self, info) -> bytes:
        if self._key is not None:
            return self._key
        external = isinstance(info, dict) and info.get("location") == "external"
        if external:
            if self.key_file is None:
                raise KeyMismatch(
                    f"store {self.root} keeps its key outside the store; pass "
                    "--secret-file FILE or set ERASE_SECRET_FILE"
                )
            key = read_key_file(self.key_file)
        else:
            if self.key_file is not None:
                raise KeyMismatch(
                    f"store {self.root} keeps its key inside the store ({SECRET}); "
                    "drop --secret-file / ERASE_SECRET_FILE for this store"
                )
            path = self.resolve(SECRET)
            if path is None:
                raise _damaged_missing(self.root / SECRET)
            key = _read_key(path, follow=False)
            if len(key) != 32:
                raise StoreDamaged(
                    f"damaged store: the store secret {path} is not 32 bytes; restore the store from a backup"
                )
        if isinstance(info, dict) and info.get("fingerprint") != key_fingerprint(key):
            if external:
                raise KeyMismatch(
                    f"{self.key_file} is not the key of store {self.root} (its "
                    "fingerprint differs); pass the key file the store was created with"
                )
            raise StoreDamaged(
                f"damaged store: the secret {self.root / SECRET} is not the store's "
                "key (it was replaced); restore the store from a backup"
            )
        self._key = key
        return key

    def check_files(self) -> None:
        """The full scan `verify` does: every file store.json records is there and matches its
        checksum, and (format 2) every chunk of every array's written rows is on disk, not a link.
        Other commands check only the files they read."""
        for rel in sorted(self.meta.checksums):
            self.read_bytes(rel)
        if self.format_version < 2 or not self.n_slots:
            return
        for name in ARRAYS:
            arr = self.array(name)
            size = arr.chunks[0]
            encode = arr.metadata.chunk_key_encoding.encode_chunk_key
            missing = [
                f"records.zarr/{name}/{encode((ci,) + (0,) * (arr.ndim - 1))}" for ci in range(-(-self.n_slots // size))
            ]
            missing = [rel for rel in missing if self.resolve(rel) is None]
            if missing:
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                raise StoreDamaged(
                    f"damaged store: chunk {self.root / missing[0]}{more} missing (they "
                    "would read as empty values); restore the store from a backup"
                )

    def size_bytes(self) -> int:
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    # ---- records
    @property
    def n_slots(self) -> int:
        return self.meta.n_slots

    @property
    def dim(self) -> int | None:
        return self.meta.dim

    def index_shard(self, shard: int) -> np.ndarray:
        """Live rows of one index shard (ids whose hash starts with byte `shard`), sorted by
        (idh, row). Sharding keeps a forget's index rewrite small at any store size."""
        if shard not in self._shards:
            rel = index_rel(shard)
            data = self.read_bytes(rel)
            arr = np.zeros(0, dtype=INDEX_DTYPE)
            if data is not None:
                try:
                    arr = np.load(io.BytesIO(data), allow_pickle=False)
                except ValueError:
                    raise StoreDamaged(f"{self.root / rel} is damaged; restore the store") from None
                if arr.dtype != INDEX_DTYPE:
                    raise StoreDamaged(f"{self.root / rel} has the wrong layout; restore the store")
            self._shards[shard] = arr
        return self._shards[shard]

    def index(self) -> np.ndarray:
        """All live rows sorted by (idh, row): the shards in order."""
        if self._index is None:
            self._index = np.concatenate([self.index_shard(b) for b in range(INDEX_SHARDS)])
        return self._index

    @property
    def n_records(self) -> int:
        return (self.meta.n_records or 0) if self.exists else 0

    def array(self, name: str):
        if name not in self._arrays:
            import zarr

            try:
                self._arrays[name] = zarr.open_array(store=_checked_store(self), path=name, mode="r")
            except EraseError:
                raise
            except Exception as exc:  # zarr raises many types for a damaged array
                raise StoreDamaged(
                    f"damaged store: array {name} in {self.root / 'records.zarr'} is "
                    f"unreadable ({type(exc).__name__}); restore the store from a "
                    "backup"
                ) from None
        return self._arrays[name]

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Values of `name` at `rows` (any order, repeats allowed), reading only the chunks
        involved, in one zarr call so they are read concurrently."""
        rows = np.asarray(rows, dtype=np.int64)
        arr = self.array(name)
        if len(rows) == 0:
            return np.zeros((0,) + arr.shape[1:], dtype=_np_dtype(name))
        uniq, inverse = np.unique(rows, return_inverse=True)
        return self._read_exact(arr, name, uniq)[inverse]

    def read_sorted_rows(self, name: str, rows) -> np.ndarray:
        """Values of `name` at `rows`, a slice or sorted distinct row numbers (no copy to undo
        repeats): what a transaction patching whole chunks reads."""
        return self._read_exact(self.array(name), name, rows)

    def _read_exact(self, arr, name: str, rows) -> np.ndarray:
        """arr at `rows` (a slice or sorted row numbers); damage becomes StoreDamaged."""
        try:
            vals = arr[rows] if isinstance(rows, slice) else arr.oindex[rows]
        except EraseError:
            raise
        except Exception as exc:
            raise StoreDamaged(
                f"a chunk of {name} in {self.root / 'records.zarr'} is damaged "
                f"({type(exc).__name__}); restore the store from a backup"
            ) from None
        if name in ("ids", "data"):
            vals = np.asarray(vals, dtype=object)
        return vals

    def iter_chunks(
        self, rows: np.ndarray, names: tuple[str, ...], span: int = CHUNK_ROWS
    ) -> Iterator[tuple[np.ndarray, dict]]:
        """Stream the given sorted live rows `span` slots at a time (a multiple of the chunk
        rows; zarr reads a span's chunks concurrently): (rows, {name: values})."""
        if len(rows) == 0:
            return
        arrays = {n: self.array(n) for n in names}
        bounds = np.flatnonzero(np.diff(rows // span)) + 1
        for part in np.split(rows, bounds):
            lo = int(part[0] // span) * span
            hi = min(lo + span, self.n_slots)
            whole = len(part) == hi - lo  # every slot of the span: no copy to pick rows
            yield (
                part,
                {
                    n: (v if whole else v[part - lo])
                    for n, v in ((n, self._read_exact(a, n, slice(lo, hi))) for n, a in arrays.items())
                },
            )

    def lookup(self, ids: list[str]) -> np.ndarray:
        """Row of each id, -1 where absent. Reads only the index shards the ids hash to, and
        confirms the id text, so hash collisions are harmless."""
        from .qkmeans import id_hash64

        rows = np.full(len(ids), -1, dtype=np.int64)
        if len(ids) == 0 or not self.exists or not self.n_records:
            return rows
        h = id_hash64(ids)
        cands: list[np.ndarray] = []
        for hi, shard in zip(h, shard_of(h)):
            part = self.index_shard(int(shard))
            lo, up = np.searchsorted(part["idh"], hi, side="left"), np.searchsorted(part["idh"], hi, side="right")
            cands.append(part["row"][lo:up])
        flat = np.concatenate(cands)
        stored = dict(zip(flat.tolist(), self.read_rows("ids", flat).tolist())) if len(flat) else {}
        for i, (rid, cand) in enumerate(zip(ids, cands)):
            for r in cand.tolist():
                if stored[r] == rid:
                    rows[i] = r
                    break
        return rows

    def live_rows(self, limit: int | None = None) -> np.ndarray:
        """Sorted live rows, optionally only those below `limit` (the rows a fit covers)."""
        rows = np.sort(self.index()["row"])
        return rows if limit is None else rows[rows < limit]

    def forgotten(self) -> set[str]:
        data = self.read_bytes(FORGOTTEN)
        return set(orjson.loads(data)) if data else set()

    def manifest_bytes(self) -> bytes | None:
        return self.read_bytes(MANIFEST)

    def manifest(self) -> Manifest | None:
        """The manifest, parsed: one of an unknown format, or incomplete, is damage."""
        data = self.manifest_bytes()
        return None if data is None else Manifest.parse(data, self.root / MANIFEST)

    def state_arrays(self) -> dict | None:
        data = self.read_bytes(STATE)
        if data is None:
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError):
            raise StoreDamaged(f"{self.root / STATE} is damaged; run 'erase fit' to rebuild it") from None

    def cache_dir(self) -> Path:
        return self.root / CACHE_DIR

    def transaction(self, action: str) -> Transaction:
        """`with store.transaction("forget") as tx:` stage with tx's operations, then tx.commit."""
        return Transaction(self, action)

    def audit_entries(self) -> list[dict]:
        path = self.resolve(AUDIT)
        if path is None:
            entries = []
        elif self._torn_audit(path):
            entries = self._entries_before_torn_line(path)
        else:
            entries = audit.read_entries(path)
        if self.pending is not None and self.pending.audit_entry is not None:
            if not entries or entries[-1].get("hash") != self.pending.audit_entry.get("hash"):
                entries.append(self.pending.audit_entry)
        return entries

    def _torn_audit(self, path: Path) -> bool:
        """Whether a pending commit's audit append was cut off (a last line with no newline).
        Only a committed journal appends, so without one a torn line is damage, not a crash."""
        if self.pending is None or self.pending.audit_entry is None:
            return False
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            if end == 0:
                return False
            f.seek(end - 1)
            return f.read(1) != b"\n"

    def _entries_before_torn_line(self, path: Path) -> list[dict]:
        """The log's complete lines: the pending journal re-appends the entry that was cut off."""
        data = path.read_bytes()
        try:
            entries = [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]
        except orjson.JSONDecodeError:
            raise StoreDamaged(
                f"audit log {path} has a line that is not valid JSON (edited); restore the log from a backup"
            ) from None
        if not all(isinstance(e, dict) for e in entries):
            raise StoreDamaged(
                f"audit log {path} has a line that is not an entry (edited); restore the log from a backup"
            )
        return entries

    def last_audit_entry(self) -> dict | None:
        if self.pending is not None and self.pending.audit_entry is not None:
            return self.pending.audit_entry
        path = self.resolve(AUDIT)
        return audit.last_entry(path) if path is not None else None


def _np_dtype(name: str):
    return {"ids": object, "data": object, "idh": np.uint64, "emb": np.float32}[name]


def _checked_store(store: Store):
    """A read-only zarr store over records.zarr that reads through `store`: a pending journal's
    staged files, no symbolic links, checksummed metadata, and a missing chunk of the written rows
    reported as damage (zarr itself would read it as fill values: empty texts, zero vectors)."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype

    class CheckedStore(zarr.storage.LocalStore):
        async def get(self, key, prototype=None, byte_range=None):
            # In a worker thread, as LocalStore does, so that zarr reads many chunks at once.
            return await asyncio.to_thread(self._checked_get, key, prototype, byte_range)

        def _checked_get(self, key, prototype, byte_range):
            rel = f"records.zarr/{key}"
            if _IS_CHUNK.fullmatch(rel):
                data = store.raw_bytes(rel)
                if data is None and store.format_version >= 2:
                    raise StoreDamaged(
                        f"damaged store: chunk {store.root / rel} is missing (it would "
                        "read as empty values); restore the store from a backup"
                    )
            else:
                data = store.read_bytes(rel)
            if data is None:
                return None
            if byte_range is not None:  # not used by these arrays' codecs; kept correct anyway
                data = _byte_range(data, byte_range)
            return (prototype or default_buffer_prototype()).buffer.from_bytes(data)

    return CheckedStore(store.root / "records.zarr", read_only=True)


def _byte_range(data: bytes, req) -> bytes:
    if hasattr(req, "suffix"):
        return data[-req.suffix :]
    if hasattr(req, "offset"):
        return data[req.offset :]
    return data[req.start : req.end]


# --------------------------------------------------------------------------- transactions


class Transaction:
    """Stage file replacements and deletions, then commit them atomically."""

    def __init__(self, store: Store, action: str):
        if not store.writable:
            raise RuntimeError("transaction on a read-only store")
        self.store = store
        self.action = action
        self.staged_root = store.root / JOURNAL_DIR / "files"
        self.deletes: set[str] = set()
        self.meta: StoreMeta | None = None  # store.json's content, set by set_meta
        self.key: bytes | None = None  # a new store's key (ensure_secret)
        self.key_info: dict | None = None
        self.checksums: dict[str, str] = {}  # checksums of live files adopted as they are (upgrade)
        self._staged_arrays: dict = {}

    def __enter__(self) -> Transaction:
        """Start staging. Any exception or signal before the commit point rolls back on exit."""
        try:
            with _os_errors(self.store.root):
                if (self.store.root / JOURNAL_DIR).exists():
                    shutil.rmtree(self.store.root / JOURNAL_DIR)
                self.staged_root.mkdir(parents=True)
            _test_point("begin")
        except BaseException:
            self.abort()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def write_file(self, rel: str, data: bytes) -> None:
        path = self.staged_root / rel
        with _os_errors(self.store.root):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def delete(self, rel: str) -> None:
        self.deletes.add(rel)

    def set_meta(self, meta: StoreMeta) -> None:
        """store.json's new content; commit adds the checksums, the audit head and the mac."""
        self.meta = meta

    # ---- typed operations: what the commands stage
    def append_rows(self, start: int, *, ids: np.ndarray, data: np.ndarray, idh: np.ndarray, emb: np.ndarray) -> int:
        """New records in slots start, start+1, ...; returns the new number of slots."""
        n_slots = start + len(ids)
        rows = np.arange(start, n_slots, dtype=np.int64)
        for name, values in (("ids", ids), ("data", data), ("idh", idh), ("emb", emb)):
            self.write_rows(name, n_slots, rows, values)
        return n_slots

    def purge_rows(self, rows: np.ndarray) -> list[str]:
        """Empty the slots `rows` in every array (their chunks are rewritten, so the bytes are
        gone once committed); returns the arrays purged."""
        n, k = self.store.n_slots, len(rows)
        empty: dict[str, np.ndarray] = {
            "ids": np.full(k, "", dtype=object),
            "data": np.full(k, "", dtype=object),
            "idh": np.zeros(k, dtype=np.uint64),
            "emb": np.zeros((k, int(self.store.dim or 0)), dtype=np.float32),
        }
        order = ("ids", "data", "idh", "emb")  # the order reports and the audit list them in
        for name in order:
            with interrupts.deferred(), _os_errors(self.store.root):
                if not self._zero_rows(name, rows):
                    self._write_rows(name, n, rows, empty[name])
        return [f"records.zarr/{name}" for name in order]

    def _zero_rows(self, name: str, rows: np.ndarray) -> bool:
        """Stage the chunks of `name` holding `rows` with those rows emptied, by patching each
        stored chunk with the codecs themselves rather than through zarr's array machinery
        (selections, assembled spans, its event loop), for the two layouts this store writes:
        - raw little-endian values then a crc32c (emb, idh): an emptied row is a run of zero
          bytes, their fill value; the checksum is checked, then recomputed;
        - vlen-utf8 strings compressed by zstd (ids, data): decoded, emptied to "" (their fill
          value), encoded again by numcodecs, which is what zarr calls for these codecs.
        Both give the bytes zarr would write (tests compare). False, and nothing staged, for any
        other layout: the caller then goes through zarr."""
        arr = self.store.array(name)
        meta = arr.metadata
        codecs = [c.to_dict() for c in meta.codecs]
        if (
            meta.chunk_key_encoding.to_dict() != _CHUNK_KEYS
            or arr.ndim not in (1, 2)
            or arr.chunks[1:] != arr.shape[1:]
        ):
            return False
        size = arr.chunks[0]
        if codecs == _RAW_CODECS and np.asarray(meta.fill_value, dtype=arr.dtype).tobytes() == bytes(
            arr.dtype.itemsize
        ):
            row_bytes = arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))

            def emptied(data: bytes, at: np.ndarray) -> bytes | None:
                body = np.frombuffer(data, dtype=np.uint8, count=min(len(data), size * row_bytes)).copy()
                if len(data) != size * row_bytes + 4 or _crc32c(body) != data[-4:]:
                    return None
                body.reshape(size, row_bytes)[at] = 0
                return body.tobytes() + _crc32c(body)

        elif (
            arr.ndim == 1
            and len(codecs) == 2
            and codecs[0] == {"name": "vlen-utf8", "configuration": {}}
            and codecs[1].get("name") == "zstd"
            and meta.fill_value == ""
        ):
            from numcodecs import VLenUTF8
            from numcodecs.zstd import Zstd

            zstd, vlen = Zstd.from_config(dict(codecs[1]["configuration"])), VLenUTF8()

            def emptied(data: bytes, at: np.ndarray) -> bytes | None:
                try:
                    values = vlen.decode(zstd.decode(data))
                except (RuntimeError, ValueError):
                    return None
                if len(values) != size:
                    return None
                values[at] = ""
                return bytes(zstd.encode(vlen.encode(values)))

        else:
            return False
        encode = meta.chunk_key_encoding.encode_chunk_key
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        bounds = np.flatnonzero(np.diff(rows // size)) + 1

        def patch(part: np.ndarray) -> None:
            ci = int(part[0] // size)
            rel = f"records.zarr/{name}/{encode((ci,) + (0,) * (arr.ndim - 1))}"
            data = self.store.raw_bytes(rel)
            new = None if data is None else emptied(data, part - ci * size)
            if new is None:
                raise StoreDamaged(
                    f"damaged store: chunk {self.store.root / rel} is missing or does not decode "
                    "(its checksum or size is wrong); restore the store from a backup"
                )
            path = self.staged_root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(new)

        # Chunks are patched several at once: reading and writing files is mostly waiting.
        with ThreadPoolExecutor(max_workers=FILE_THREADS) as pool:
            list(pool.map(patch, np.split(rows, bounds) if len(rows) else []))
        return True

    def update_index(
        self,
        *,
        add: np.ndarray | None = None,
        remove_rows: np.ndarray | None = None,
        remove_idh: np.ndarray | None = None,
    ) -> None:
        """Stage the index shards that change (see index_changes)."""
        self.write_files(index_changes(self.store, add=add, remove_rows=remove_rows, remove_idh=remove_idh))

    def set_forgotten(self, hashes: set[str]) -> None:
        """forgotten.json: the keyed hashes of every id forgotten so far."""
        self.write_file(FORGOTTEN, orjson.dumps(sorted(hashes)))

    def set_fit(self, state_arrays: dict[str, np.ndarray], manifest: Manifest) -> list[str]:
        """The fitted state and its manifest; returns the files replaced."""
        self.write_file(STATE, npz_bytes(state_arrays))
        self.write_file(MANIFEST, manifest.to_bytes())
        return [STATE, MANIFEST]

    def delete_cache(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Drop the prefix KV cache files of every prompt whose digest is not in `keep` (they
        were built for prompts the fit no longer serves); returns what goes. A file that is not
        a cache file by name takes the whole directory with it."""
        cache = self.store.root / CACHE_DIR
        if not cache.is_dir():
            return []
        names = sorted(p.name for p in cache.iterdir())
        if not all(_DELETABLE_CACHE.fullmatch(f"{CACHE_DIR}/{name}") for name in names):
            self.delete(CACHE_DIR)
            return [CACHE_DIR]
        gone = [f"{CACHE_DIR}/{name}" for name in names if name.split("-", 1)[0] not in keep]
        for rel in gone:
            self.delete(rel)
        return gone

    def write_files(self, files: dict[str, bytes | None]) -> None:
        """Stage small files: bytes to write, None to delete."""
        for rel, data in files.items():
            if data is None:
                self.delete(rel)
            else:
                self.write_file(rel, data)

    # ---- zarr
    def create_arrays(self, dim: int) -> None:
        """A new records.zarr (first ingest): everything is staged, so nothing is half-made."""
        with interrupts.deferred(), _os_errors(self.store.root):
            self._create_arrays(self.staged_root / "records.zarr", dim)

    def _create_arrays(self, root: Path, dim: int) -> None:
        import zarr
        from zarr.codecs import Crc32cCodec, ZstdCodec

        group = zarr.open_group(store=zarr.storage.LocalStore(root), mode="w")
        text = [ZstdCodec(level=3, checksum=True)]
        group.create_array("ids", shape=(0,), chunks=(CHUNK_ROWS,), dtype=str, compressors=text)
        group.create_array("data", shape=(0,), chunks=(CHUNK_ROWS,), dtype=str, compressors=text)
        group.create_array("idh", shape=(0,), chunks=(CHUNK_ROWS,), dtype="uint64", compressors=[Crc32cCodec()])
        # Embeddings barely compress; a checksum alone keeps reads at memory speed.
        group.create_array(
            "emb", shape=(0, dim), chunks=(EMB_CHUNK_ROWS, dim), dtype="float32", compressors=[Crc32cCodec()]
        )

    def _staged_array(self, name: str, n_slots: int):
        """The staged copy of array `name` with `n_slots` rows: same codecs as the live one.
        Empty chunks are written too, so that a chunk missing on disk is always damage."""
        import zarr

        if name not in self._staged_arrays:
            rel = f"records.zarr/{name}/zarr.json"
            path = self.staged_root / "records.zarr" / name
            source = path / "zarr.json"  # created by create_arrays for a new store
            raw = source.read_bytes() if source.exists() else self.store.read_bytes(rel)
            if raw is None:
                raise _damaged_missing(self.store.root / rel)
            try:
                meta = orjson.loads(raw)
                meta["shape"] = [n_slots] + list(meta["shape"][1:])
            except (orjson.JSONDecodeError, TypeError, KeyError, IndexError):
                raise StoreDamaged(
                    f"damaged store: {self.store.root / rel} is unreadable; restore the store from a backup"
                ) from None
            path.mkdir(parents=True, exist_ok=True)
            (path / "zarr.json").write_bytes(orjson.dumps(meta))
            self._staged_arrays[name] = zarr.open_array(
                store=zarr.storage.LocalStore(self.staged_root / "records.zarr"),
                path=name,
                mode="r+",
            ).with_config({"write_empty_chunks": True})
        return self._staged_arrays[name]

    def write_rows(self, name: str, n_slots: int, rows: np.ndarray, values: np.ndarray) -> None:
        """Stage whole chunks of `name` so that rows[i] holds values[i] in an array of n_slots rows.

        Each touched chunk is read from the live array, patched and written in full; a chunk that
        ends up all fill value is not written by zarr, so its live file is deleted instead.
        """
        # Deferred: zarr writes chunks from its own threads, which a signal in this thread would
        # not stop; rolling back while they still write would leave staged files behind.
        with interrupts.deferred(), _os_errors(self.store.root):
            self._write_rows(name, n_slots, rows, values)

    def _write_rows(self, name: str, n_slots: int, rows: np.ndarray, values: np.ndarray) -> None:
        staged = self._staged_array(name, n_slots)
        live_len = self.store.n_slots if self.store.exists else 0
        rows = np.asarray(rows, dtype=np.int64)
        encode = staged.metadata.chunk_key_encoding.encode_chunk_key
        size = staged.chunks[0]
        chunks = np.unique(rows // size)
        # Every touched chunk is read and written in one orthogonal selection per group, so zarr
        # handles the group's chunks concurrently; groups are capped so that a big batch never
        # holds a whole array in memory.
        for group in np.array_split(chunks, -(-len(chunks) // GROUP_CHUNKS)):
            span = (group[:, None] * size + np.arange(size)[None, :]).ravel()
            span = span[span < n_slots]
            block = np.empty((len(span),) + staged.shape[1:], dtype=_np_dtype(name))
            block[...] = "" if name in ("ids", "data") else 0
            old = span[span < live_len]  # a prefix: span is sorted
            if live_len and len(old):
                block[: len(old)] = self.store.read_sorted_rows(name, old)
            sel = np.isin(rows, span)
            block[np.searchsorted(span, rows[sel])] = values[sel]
            staged.oindex[span] = block
            for ci in group.tolist():
                key = encode((ci,) + (0,) * (staged.ndim - 1))
                if not (self.staged_root / "records.zarr" / name / key).exists():
                    self.deletes.add(f"records.zarr/{name}/{key}")

    def fill_missing_chunks(self, name: str) -> int:
        """Write the chunks of `name` that are absent on disk (an older erase left out chunks
        holding only empty slots); returns how many. Used once, by the format upgrade."""
        arr = self.store.array(name)
        size = arr.chunks[0]
        encode = arr.metadata.chunk_key_encoding.encode_chunk_key
        missing = [
            ci
            for ci in range(-(-self.store.n_slots // size))
            if self.store.resolve(f"records.zarr/{name}/" + encode((ci,) + (0,) * (arr.ndim - 1))) is None
        ]
        if missing:
            rows = (np.asarray(missing)[:, None] * size + np.arange(size)[None, :]).ravel()
            rows = rows[rows < self.store.n_slots]
            self.write_rows(name, self.store.n_slots, rows, self.store.read_rows(name, rows))
        return len(missing)

    # ---- commit
    def commit(self, audit_details: dict) -> dict:
        """Make everything staged take effect at once. Returns the audit entry written.

        store.json is written here, last: the checksums of every small file staged, the audit head,
        the format and the keyed mac, so nothing else can forget to update them."""
        root = self.store.root
        if self.meta is None:
            raise RuntimeError("set_meta() must run before commit()")
        try:
            replaces, written = [], []
            for dirpath, _, files in os.walk(self.staged_root):
                written.append(Path(dirpath))
                for name in files:
                    path = Path(dirpath) / name
                    rel = path.relative_to(self.staged_root).as_posix()
                    if name.endswith(".partial") or name.startswith(".tmp-") or self._unchanged(rel, path):
                        path.unlink()
                        continue
                    written.append(path)
                    replaces.append(rel)
            deletes = sorted(self.deletes - set(replaces))
            meta = self.meta.to_json()
            sums = {rel: h for rel, h in meta["checksums"].items() if rel not in deletes}
            for rel in replaces:
                if rel != SECRET and not _IS_CHUNK.fullmatch(rel):
                    sums[rel] = hashlib.sha256((self.staged_root / rel).read_bytes()).hexdigest()
            sums.update(self.checksums)
            meta["checksums"] = sums
            key = self.key if self.key is not None else self.store.key()
            if self.key_info is not None:
                meta["key"] = self.key_info
            entry = audit.new_entry(self.store.last_audit_entry(), self.action, audit_details, key=key)
            # store.json remembers the newest entry's hash under its mac: a log that was cut,
            # removed or rewritten no longer ends there, and writers refuse it.
            meta.update(audit_head=entry["hash"], format=FORMAT, format_version=FORMAT_VERSION)
            meta["mac"] = meta_mac(key, meta)
            (self.staged_root / STORE_JSON).write_bytes(_dumps(meta))
            written.append(self.staged_root / STORE_JSON)
            if STORE_JSON not in replaces:
                replaces.append(STORE_JSON)
            ordered = _order(replaces)
            journal = {"action": self.action, "replaces": ordered, "deletes": deletes, "audit": entry}
            _sync_all(root, written)
            _test_point("staged")
            interrupts.committing()
            atomic_write(root / JOURNAL_DIR / "journal.json", orjson.dumps(journal))
        except EraseError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise _os_error(exc, root) from None
        _test_point("committed")
        Journal(self.action, ordered, deletes, entry).apply(root, key)
        self.store.reload()
        return entry

    def _unchanged(self, rel: str, staged: Path) -> bool:
        """An array's zarr.json staged only so zarr could open the staged copy, same as live."""
        if not rel.endswith("zarr.json"):
            return False
        return self.store.raw_bytes(rel) == staged.read_bytes()

    def abort(self) -> None:
        """Roll back what was staged. A journal that reached its commit point is never removed:
        the batch is decided, and the next writing command completes it."""
        journal = self.store.root / JOURNAL_DIR
        if (journal / "journal.json").exists():
            return
        with interrupts.deferred():  # a signal now would leave half the staging behind
            shutil.rmtree(journal, ignore_errors=True)


# --------------------------------------------------------------------------- opening


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise StoreMissing(
            f"store path {root} is a file, not a directory; pass --store DIR (or set ERASE_STORE) to a directory"
        )


def _check_layout(root: Path) -> None:
    """No symbolic link at any place the format knows (a few lstat calls): erase never writes or
    reads through one. Deeper paths are checked as they are used."""
    for rel in _LAYOUT:
        path = root / rel
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise _link_error(path)


@contextlib.contextmanager
def open_store(
    root: str | Path,
    *,
    write: bool,
    create: bool = False,
    lock_timeout: float = 60.0,
    on_message: Message | None = None,
    key_file: Path | None = None,
    upgrade: bool = True,
) -> Iterator[Store]:
    """Open with the lock held: exclusive for writers (which first recover a pending journal,
    check the audit log and upgrade an older format), shared for readers (which read through a
    pending journal and write nothing). `create` makes the directory for a first ingest.

    The --store path may itself be a symbolic link: it is resolved once, here."""
    say = on_message or (lambda _m: None)
    root = Path(root)
    _check_root(root)
    if not root.exists():
        if not create:
            raise StoreMissing(f"no store at {root}; create one with 'erase ingest FILE.jsonl' or pass --store DIR")
        try:
            root.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise _os_error(exc, root) from None
    root = root.resolve()
    if write:
        # Everything a writer creates is readable by its owner only.
        os.umask(0o077)
        if create and not (root / STORE_JSON).exists() and set(os.listdir(root)) <= {LOCK, JOURNAL_DIR}:
            # An empty directory the user made for the store (mode 0755, say) becomes owner-only
            # too; a directory holding other things (--store . by mistake) is left alone.
            with _os_errors(root):
                os.chmod(root, 0o700)
        if not os.access(root, os.W_OK):
            raise StoreNotWritable(f"store {root} is not writable; fix its permissions or pass another --store")
    if os.stat(root).st_mode & stat.S_IWOTH:
        say(f"warning: store {root} is writable by every user, who could plant or damage files; run 'chmod 700 {root}'")
    with StoreLock(root / LOCK, shared=not write, timeout=lock_timeout, on_wait=say):
        _check_layout(root)
        store = Store(root, writable=write, key_file=key_file)
        journal = Journal.read(root)
        if write:
            if journal is not None:
                with interrupts.deferred():
                    journal.apply(root, _journal_key(root, journal, key_file))
                store.recovered = {"action": journal.action, "outcome": "completed"}
                say(f"completed an interrupted {journal.action} found in {root}")
            elif (root / JOURNAL_DIR).exists():
                with interrupts.deferred():
                    shutil.rmtree(root / JOURNAL_DIR)
                    fsync_path(root)
                store.recovered = {"action": None, "outcome": "rolled_back"}
                say(f"rolled back an interrupted operation found in {root} (it had not committed)")
            if store.exists:
                # Writers never build on a log that does not end where store.json says.
                audit.check_head(root / AUDIT, store.meta.audit_head)
                if upgrade and store.format_version < FORMAT_VERSION:
                    _upgrade(store, say)
        elif journal is not None:
            store.pending = journal
            say(
                f"an interrupted {journal.action} is pending in {root}; showing the state it "
                "committed (the next writing command, or 'erase recover', completes it)"
            )
        elif (root / JOURNAL_DIR).exists():
            say(
                f"an interrupted operation that never committed is pending in {root}; the next "
                "writing command, or 'erase recover', rolls it back"
            )
        if not store.exists:
            remains = [
                rel
                for rel in (SECRET, "records.zarr", INDEX_DIR, MANIFEST, FORGOTTEN, AUDIT)
                if os.path.lexists(root / rel)
            ]
            if remains:
                # A store whose store.json is gone is damaged, not new: starting afresh over its
                # files would mix old records and history into a new store.
                raise StoreDamaged(
                    f"damaged store: {root / STORE_JSON} is missing but {root} holds "
                    f"store files ({', '.join(remains)}); restore the store from a backup"
                )
            if not create:
                raise StoreMissing(f"no store at {root}; create one with 'erase ingest FILE.jsonl'")
        yield store


def _journal_key(root: Path, journal: Journal, key_file: Path | None) -> bytes | None:
    """The key a found journal's audit entry was made with: that of the store.json it commits
    (whose mac is checked on the way), None for a format-1 store."""
    if journal.audit_entry is None:
        return None
    probe = Store(root, writable=False, key_file=key_file)
    probe.pending = journal
    return probe.key() if probe.format_version >= 2 else None


def _upgrade(store: Store, say: Message) -> None:
    """erase-store/1 -> 2 in one journaled step, logged as an `upgrade` audit entry: store.json
    gains its keyed mac and the checksums of the zarr metadata, the chunks an older erase left out
    are written, and the audit chain is keyed from this entry on."""
    with store.transaction("upgrade") as tx:
        key = store.key()
        meta = store.meta
        filled = {name: tx.fill_missing_chunks(name) for name in ARRAYS} if store.n_slots else {}
        for rel in ["records.zarr/zarr.json"] + [f"records.zarr/{a}/zarr.json" for a in ARRAYS]:
            data = store.raw_bytes(rel)
            if data is not None:
                tx.checksums[rel] = hashlib.sha256(data).hexdigest()
        last = store.last_audit_entry()
        tx.key_info = {"location": "store", "fingerprint": key_fingerprint(key)}
        tx.set_meta(meta.with_(audit_keyed_from=0 if last is None else int(last["seq"]) + 1))
        tx.commit({"from_format": str(meta.format), "to_format": FORMAT, "chunks_written": int(sum(filled.values()))})
    say(f"upgraded store {store.root} to {FORMAT} (one journaled step, logged as an 'upgrade' audit entry)")


def new_meta(dim: int, embedder: str) -> StoreMeta:
    return StoreMeta.new(dim, embedder, CHUNK_ROWS)


def shard_of(idh: np.ndarray) -> np.ndarray:
    return (np.asarray(idh, dtype=np.uint64) >> np.uint64(56)).astype(np.int64)


def index_rel(shard: int) -> str:
    return f"{INDEX_DIR}/{shard:02x}.npy"


def index_changes(
    store: Store,
    *,
    add: np.ndarray | None = None,
    remove_rows: np.ndarray | None = None,
    remove_idh: np.ndarray | None = None,
) -> dict[str, bytes | None]:
    """The index shard files that change when entries `add` (INDEX_DTYPE) come in and the rows
    `remove_rows` (with their id hashes `remove_idh`) go: {relpath: bytes, or None to delete}."""
    add = np.zeros(0, dtype=INDEX_DTYPE) if add is None else add
    remove_rows = np.zeros(0, dtype=np.int64) if remove_rows is None else np.asarray(remove_rows)
    touched = set(shard_of(add["idh"]).tolist())
    if remove_idh is not None:
        touched |= set(shard_of(remove_idh).tolist())
    add_shards = shard_of(add["idh"])
    existing = store.exists  # an lstat each time: once, not once per touched shard (up to 256)
    out: dict[str, bytes | None] = {}
    for b in sorted(touched):
        cur = store.index_shard(b) if existing else np.zeros(0, dtype=INDEX_DTYPE)
        if len(remove_rows):
            cur = cur[~np.isin(cur["row"], remove_rows)]
        merged = np.concatenate([cur, add[add_shards == b]])
        merged = merged[np.lexsort((merged["row"], merged["idh"]))]
        out[index_rel(b)] = npy_bytes(merged) if len(merged) else None
    return out


def ensure_secret(tx: Transaction) -> bytes:
    """The store's HMAC key. A new store gets a fresh random one in its `secret` file, or adopts
    the external key file it was opened with (--secret-file), recording only its fingerprint. An
    existing store's key must be there: a missing secret is damage, never silently replaced."""
    store = tx.store
    if store.exists:
        return store.key()
    if store.key_file is not None:
        key, location = read_key_file(store.key_file), "external"
    else:
        key, location = os.urandom(32), "store"
        tx.write_file(SECRET, key)
    tx.key, tx.key_info = key, {"location": location, "fingerprint": key_fingerprint(key)}
    return key
