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
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import orjson

from . import audit
from .durable import atomic_write, fsync_path
from .errors import (
    DiskFull,
    EraseError,
    StoreDamaged,
    StoreMissing,
    StoreNotWritable,
    StoreTooNew,
)
from .lock import StoreLock

FORMAT = "erase-store/1"
FORMAT_VERSION = 1
CHUNK_ROWS = 1024
SYNCFS_OVER = 64  # files to make durable at once above which one syncfs replaces the fsyncs
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
# Files whose sha256 store.json records, so damage is reported instead of answered wrongly.

Message = Callable[[str], None]


def _crash_point(name: str) -> None:
    """Test hook: ERASE_TEST_CRASH_AT=<name> ends the process on the spot, as SIGKILL or a power
    cut would (no cleanup, no exception handlers). Inert unless the variable names this point."""
    if os.environ.get("ERASE_TEST_CRASH_AT") == name:
        os._exit(137)


def _dumps(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


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
    import errno

    if exc.errno == errno.ENOSPC:
        return DiskFull(f"no space left on the device while writing {path}; free space and retry "
                        "(the store was left unchanged)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreNotWritable(f"cannot write {path}: {exc.strerror}; fix the permissions "
                                "(the store was left unchanged)")
    return StoreDamaged(f"cannot access {path}: {exc.strerror}")


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
    np.savez(buf, **arrays)
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
    def read(cls, root: Path) -> "Journal | None":
        path = root / JOURNAL_DIR / "journal.json"
        try:
            raw = orjson.loads(path.read_bytes())
            return cls(raw["action"], list(raw["replaces"]), list(raw["deletes"]), raw.get("audit"))
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            # journal.json is written atomically, so a torn one means outside damage.
            raise StoreDamaged(f"the journal {path} is unreadable ({exc}); restore the store "
                               "from a backup") from None

    def apply(self, root: Path) -> None:
        """Idempotent: a replay after a crash part-way through gives the same result."""
        staged_root = root / JOURNAL_DIR / "files"
        dirs: set[Path] = set()
        for rel in self.deletes:
            target = root / rel
            if target.is_dir():
                shutil.rmtree(target)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
            dirs.add(target.parent)
        for n, rel in enumerate(self.replaces, start=1):  # ordered: store.json, then manifest.json last
            staged = staged_root / rel
            target = root / rel
            if staged.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
                dirs.add(target.parent)
            _crash_point(f"apply:{n}")
        _sync_all(root, [d for d in dirs if d.exists()])
        _crash_point("applied")
        if self.audit_entry is not None and not audit.contains_tail(root / AUDIT, self.audit_entry):
            audit.append(root / AUDIT, self.audit_entry)
        _crash_point("audited")
        shutil.rmtree(root / JOURNAL_DIR)
        fsync_path(root)


def _order(rels: list[str]) -> list[str]:
    """manifest.json last and store.json just before it: a reader that sees the new manifest
    sees everything it refers to."""
    rank = {STORE_JSON: 1, MANIFEST: 2}
    return sorted(rels, key=lambda r: (rank.get(r, 0), r))


# --------------------------------------------------------------------------- store


class Store:
    """An opened store. Use `open_store`; reads are overlay-aware when a commit is pending."""

    def __init__(self, root: Path, *, writable: bool):
        self.root = root
        self.writable = writable
        self.pending: Journal | None = None
        self._meta: dict | None = None
        self._index: np.ndarray | None = None
        self._shards: dict[int, np.ndarray] = {}
        self._arrays: dict = {}

    # ---- files
    def resolve(self, rel: str) -> Path | None:
        """Where `rel` lives in the last consistent state (through a pending journal)."""
        if self.pending is not None:
            if rel in self.pending.deletes or any(rel.startswith(d + "/") for d in self.pending.deletes):
                return None
            staged = self.root / JOURNAL_DIR / "files" / rel
            if rel in self.pending.replaces and staged.exists():
                return staged
        path = self.root / rel
        return path if path.exists() else None

    def read_bytes(self, rel: str) -> bytes | None:
        path = self.resolve(rel)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _os_error(exc, path) from None
        want = self.meta.get("checksums", {}).get(rel) if rel != STORE_JSON else None
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            raise StoreDamaged(f"{self.root / rel} does not match its checksum (edited or damaged); "
                               "restore the store from a backup, or run 'erase fit' if only the "
                               "fit is affected")
        return data

    @property
    def meta(self) -> dict:
        if self._meta is None:
            path = self.resolve(STORE_JSON)
            if path is None:
                raise StoreMissing(f"no store at {self.root}; create one with 'erase ingest FILE.jsonl'")
            try:
                meta = orjson.loads(path.read_bytes())
            except (orjson.JSONDecodeError, OSError):
                raise StoreDamaged(f"{path} is unreadable; restore the store from a backup") from None
            if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
                raise StoreDamaged(f"{path} is not an erase store file; restore it from a backup")
            if meta["format_version"] > FORMAT_VERSION:
                raise StoreTooNew(f"store {self.root} has format version {meta['format_version']}, "
                                  f"newer than this erase understands ({FORMAT_VERSION}); upgrade erase")
            self._meta = meta
        return self._meta

    @property
    def exists(self) -> bool:
        return self.resolve(STORE_JSON) is not None

    def secret(self) -> bytes:
        data = self.read_bytes(SECRET)
        if data is None or len(data) != 32:
            raise StoreDamaged(f"the store secret {self.root / SECRET} is missing or damaged; "
                               "restore the store from a backup")
        return data

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
        return int(self.meta.get("n_slots", 0))

    @property
    def dim(self) -> int | None:
        return self.meta.get("dim")

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
        return int(self.meta.get("n_records", 0)) if self.exists else 0

    def array(self, name: str):
        if name not in self._arrays:
            import zarr

            if self.pending is None:
                zstore = zarr.storage.LocalStore(self.root / "records.zarr", read_only=True)
            else:
                zstore = _overlay_store(self, "records.zarr")
            try:
                self._arrays[name] = zarr.open_array(store=zstore, path=name, mode="r")
            except Exception as exc:  # zarr raises many types for a damaged array
                raise StoreDamaged(f"array {name} in {self.root / 'records.zarr'} is unreadable "
                                   f"({type(exc).__name__}); restore the store from a backup") from None
        return self._arrays[name]

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Values of `name` at `rows` (any order, repeats allowed), reading only the chunks
        involved, in one zarr call so they are read concurrently."""
        rows = np.asarray(rows, dtype=np.int64)
        arr = self.array(name)
        if len(rows) == 0:
            return np.zeros((0,) + arr.shape[1:], dtype=_np_dtype(name))
        uniq, inverse = np.unique(rows, return_inverse=True)
        return self._read_rows_exact(arr, name, uniq)[inverse]

    def _read_chunk(self, arr, name: str, lo: int, hi: int) -> np.ndarray:
        return self._read_rows_exact(arr, name, slice(lo, hi))

    def _read_rows_exact(self, arr, name: str, rows) -> np.ndarray:
        """arr at `rows` (a slice or sorted row numbers); damage becomes StoreDamaged."""
        try:
            vals = arr[rows] if isinstance(rows, slice) else arr.oindex[rows]
        except Exception as exc:
            raise StoreDamaged(f"a chunk of {name} in {self.root / 'records.zarr'} is damaged "
                               f"({type(exc).__name__}); restore the store from a backup") from None
        if name in ("ids", "data"):
            vals = np.asarray(vals, dtype=object)
        return vals

    def iter_chunks(self, rows: np.ndarray, names: tuple[str, ...]) -> Iterator[tuple[np.ndarray, dict]]:
        """Stream the given sorted live rows chunk by chunk: (rows, {name: values})."""
        if len(rows) == 0:
            return
        arrays = {n: self.array(n) for n in names}
        chunk_ids = rows // CHUNK_ROWS
        bounds = np.flatnonzero(np.diff(chunk_ids)) + 1
        for part in np.split(rows, bounds):
            lo = int(part[0] // CHUNK_ROWS) * CHUNK_ROWS
            hi = min(lo + CHUNK_ROWS, self.n_slots)
            yield part, {n: self._read_chunk(a, n, lo, hi)[part - lo] for n, a in arrays.items()}

    def lookup(self, ids: list[str]) -> np.ndarray:
        """Row of each id, -1 where absent. Reads only the index shards the ids hash to, and
        confirms the id text, so hash collisions are harmless."""
        from .qkmeans import id_hash64

        rows = np.full(len(ids), -1, dtype=np.int64)
        if len(ids) == 0 or not self.exists or not self.n_records:
            return rows
        h = id_hash64(ids)
        cands: list[np.ndarray] = []
        for i, (hi, shard) in enumerate(zip(h, shard_of(h))):
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

    def manifest(self) -> dict | None:
        data = self.manifest_bytes()
        if data is None:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise StoreDamaged(f"{self.root / MANIFEST} is not valid JSON; run 'erase fit' to rewrite it") from None

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
            entries = [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()
                       if line.strip()]
        except orjson.JSONDecodeError:
            raise StoreDamaged(f"audit log {path} has a line that is not valid JSON (edited); "
                               "restore the log from a backup") from None
        if not all(isinstance(e, dict) for e in entries):
            raise StoreDamaged(f"audit log {path} has a line that is not an entry (edited); "
                               "restore the log from a backup")
        return entries

    def last_audit_entry(self) -> dict | None:
        if self.pending is not None and self.pending.audit_entry is not None:
            return self.pending.audit_entry
        path = self.resolve(AUDIT)
        return audit.last_entry(path) if path is not None else None


def _np_dtype(name: str):
    return {"ids": object, "data": object, "idh": np.uint64, "emb": np.float32}[name]


def _overlay_store(store: Store, prefix: str):
    """A read-only zarr store that reads through a pending committed journal."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage._local import _get

    class OverlayStore(zarr.storage.LocalStore):
        async def get(self, key, prototype=None, byte_range=None):
            path = store.resolve(f"{prefix}/{key}")
            if path is None or path.is_dir():
                return None
            return _get(path, prototype or default_buffer_prototype(), byte_range)

    return OverlayStore(store.root / prefix, read_only=True)


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
        self._staged_arrays: dict = {}
        with _os_errors(store.root):
            if (store.root / JOURNAL_DIR).exists():
                shutil.rmtree(store.root / JOURNAL_DIR)
            self.staged_root.mkdir(parents=True)

    def write_file(self, rel: str, data: bytes) -> None:
        path = self.staged_root / rel
        with _os_errors(self.store.root):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def delete(self, rel: str) -> None:
        self.deletes.add(rel)

    # ---- zarr
    def create_arrays(self, dim: int) -> None:
        """A new records.zarr (first ingest): everything is staged, so nothing is half-made."""
        with _os_errors(self.store.root):
            self._create_arrays(self.staged_root / "records.zarr", dim)

    def _create_arrays(self, root: Path, dim: int) -> None:
        import zarr
        from zarr.codecs import Crc32cCodec, ZstdCodec

        group = zarr.open_group(store=zarr.storage.LocalStore(root), mode="w")
        text = dict(compressors=[ZstdCodec(level=3, checksum=True)])
        group.create_array("ids", shape=(0,), chunks=(CHUNK_ROWS,), dtype=str, **text)
        group.create_array("data", shape=(0,), chunks=(CHUNK_ROWS,), dtype=str, **text)
        group.create_array("idh", shape=(0,), chunks=(CHUNK_ROWS,), dtype="uint64",
                           compressors=[Crc32cCodec()])
        # Embeddings barely compress; a checksum alone keeps reads at memory speed.
        group.create_array("emb", shape=(0, dim), chunks=(EMB_CHUNK_ROWS, dim), dtype="float32",
                           compressors=[Crc32cCodec()])

    def _staged_array(self, name: str, n_slots: int):
        """The staged copy of array `name` with `n_slots` rows: same codecs as the live one."""
        import zarr

        if name not in self._staged_arrays:
            path = self.staged_root / "records.zarr" / name
            source = path / "zarr.json"  # created by create_arrays for a new store
            if not source.exists():
                source = self.store.resolve(f"records.zarr/{name}/zarr.json")
            meta = orjson.loads(source.read_bytes())
            meta["shape"] = [n_slots] + list(meta["shape"][1:])
            path.mkdir(parents=True, exist_ok=True)
            (path / "zarr.json").write_bytes(orjson.dumps(meta))
            self._staged_arrays[name] = zarr.open_array(
                store=zarr.storage.LocalStore(self.staged_root / "records.zarr"), path=name, mode="r+"
            )
        return self._staged_arrays[name]

    def write_rows(self, name: str, n_slots: int, rows: np.ndarray, values: np.ndarray) -> None:
        """Stage whole chunks of `name` so that rows[i] holds values[i] in an array of n_slots rows.

        Each touched chunk is read from the live array, patched and written in full; a chunk that
        ends up all fill value is not written by zarr, so its live file is deleted instead.
        """
        with _os_errors(self.store.root):
            self._write_rows(name, n_slots, rows, values)

    def _write_rows(self, name: str, n_slots: int, rows: np.ndarray, values: np.ndarray) -> None:
        staged = self._staged_array(name, n_slots)
        live_len = self.store.n_slots if self.store.exists else 0
        live = self.store.array(name) if live_len else None
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
            if live is not None and len(old):
                block[: len(old)] = self.store._read_rows_exact(live, name, old)
            sel = np.isin(rows, span)
            block[np.searchsorted(span, rows[sel])] = values[sel]
            staged.oindex[span] = block
            for ci in group.tolist():
                key = encode((ci,) + (0,) * (staged.ndim - 1))
                if not (self.staged_root / "records.zarr" / name / key).exists():
                    self.deletes.add(f"records.zarr/{name}/{key}")

    # ---- commit
    def commit(self, audit_details: dict | None = None) -> dict | None:
        """Make everything staged take effect at once. Returns the audit entry written."""
        root = self.store.root
        try:
            entry = None
            if audit_details is not None:
                entry = audit.new_entry(self.store.last_audit_entry(), self.action, audit_details)
                # store.json remembers the newest entry's hash, so cutting entries off the end of
                # the log is detected by `erase log --verify`.
                meta_path = self.staged_root / STORE_JSON
                if meta_path.exists():
                    meta = orjson.loads(meta_path.read_bytes())
                    meta["audit_head"] = entry["hash"]
                    meta_path.write_bytes(_dumps(meta))
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
            journal = {
                "action": self.action,
                "replaces": _order(replaces),
                "deletes": sorted(self.deletes - set(replaces)),
                "audit": entry,
            }
            _sync_all(root, written)
            _crash_point("staged")
            atomic_write(root / JOURNAL_DIR / "journal.json", orjson.dumps(journal))
        except OSError as exc:
            self.abort()
            raise _os_error(exc, root) from None
        _crash_point("committed")
        Journal(journal["action"], journal["replaces"], journal["deletes"], entry).apply(root)
        self.store._meta = self.store._index = None
        self.store._shards = {}
        self.store._arrays = {}
        return entry

    def _unchanged(self, rel: str, staged: Path) -> bool:
        """An array's zarr.json staged only so zarr could open the staged copy, same as live."""
        if not rel.endswith("zarr.json"):
            return False
        live = self.store.root / rel
        return live.exists() and live.read_bytes() == staged.read_bytes()

    def abort(self) -> None:
        shutil.rmtree(self.store.root / JOURNAL_DIR, ignore_errors=True)


# --------------------------------------------------------------------------- opening


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise StoreMissing(f"store path {root} is a file, not a directory; pass --store DIR "
                           "(or set ERASE_STORE) to a directory")


@contextlib.contextmanager
def open_store(root: str | Path, *, write: bool, create: bool = False, lock_timeout: float = 60.0,
               on_message: Message | None = None) -> Iterator[Store]:
    """Open with the lock held: exclusive for writers (which first recover a pending journal),
    shared for readers (which read through it). `create` makes the directory for a first ingest."""
    root = Path(root)
    say = on_message or (lambda _m: None)
    _check_root(root)
    if not root.exists():
        if not create:
            raise StoreMissing(f"no store at {root}; create one with 'erase ingest FILE.jsonl' "
                               "or pass --store DIR")
        try:
            root.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise _os_error(exc, root) from None
    if write:
        # Everything a writer creates is readable by its owner only.
        os.umask(0o077)
        if create and not (root / STORE_JSON).exists() and set(os.listdir(root)) <= {"lock", JOURNAL_DIR}:
            # An empty directory the user made for the store (mode 0755, say) becomes owner-only
            # too; a directory holding other things (--store . by mistake) is left alone.
            with _os_errors(root):
                os.chmod(root, 0o700)
        if not os.access(root, os.W_OK):
            raise StoreNotWritable(f"store {root} is not writable; fix its permissions or pass "
                                   "another --store")
    with StoreLock(root / "lock", shared=not write, timeout=lock_timeout, on_wait=say):
        store = Store(root, writable=write)
        journal = Journal.read(root)
        if write:
            if journal is not None:
                journal.apply(root)
                say(f"completed an interrupted {journal.action} found in {root}")
            elif (root / JOURNAL_DIR).exists():
                shutil.rmtree(root / JOURNAL_DIR)
                fsync_path(root)
                say(f"rolled back an interrupted operation found in {root} (it had not committed)")
        elif journal is not None:
            store.pending = journal
            say(f"an interrupted {journal.action} is pending in {root}; showing the state it "
                "committed (the next writing command completes it)")
        elif (root / JOURNAL_DIR).exists():
            say(f"an interrupted operation that never committed is pending in {root}; the next "
                "writing command rolls it back")
        if not create and not store.exists:
            raise StoreMissing(f"no store at {root}; create one with 'erase ingest FILE.jsonl'")
        yield store


def new_meta(dim: int, embedder: str) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dim": dim,
        "embedder": embedder,
        "chunk_rows": CHUNK_ROWS,
        "n_slots": 0,
        "n_forgotten": 0,
        "fit": None,
        "counters": {"forget_batches": 0, "crossing_batches": 0, "prompt_changes": 0, "refits": 0,
                     "examples_replaced": 0},
        "checksums": {},
    }


def shard_of(idh: np.ndarray) -> np.ndarray:
    return (np.asarray(idh, dtype=np.uint64) >> np.uint64(56)).astype(np.int64)


def index_rel(shard: int) -> str:
    return f"{INDEX_DIR}/{shard:02x}.npy"


def index_changes(store: Store, *, add: np.ndarray | None = None,
                  remove_rows: np.ndarray | None = None, remove_idh: np.ndarray | None = None
                  ) -> dict[str, bytes | None]:
    """The index shard files that change when entries `add` (INDEX_DTYPE) come in and the rows
    `remove_rows` (with their id hashes `remove_idh`) go: {relpath: bytes, or None to delete}."""
    add = np.zeros(0, dtype=INDEX_DTYPE) if add is None else add
    remove_rows = np.zeros(0, dtype=np.int64) if remove_rows is None else np.asarray(remove_rows)
    touched = set(shard_of(add["idh"]).tolist())
    if remove_idh is not None:
        touched |= set(shard_of(remove_idh).tolist())
    add_shards = shard_of(add["idh"])
    out: dict[str, bytes | None] = {}
    for b in sorted(touched):
        cur = store.index_shard(b) if store.exists else np.zeros(0, dtype=INDEX_DTYPE)
        if len(remove_rows):
            cur = cur[~np.isin(cur["row"], remove_rows)]
        merged = np.concatenate([cur, add[add_shards == b]])
        merged = merged[np.lexsort((merged["row"], merged["idh"]))]
        out[index_rel(b)] = npy_bytes(merged) if len(merged) else None
    return out


def stage_meta(tx: Transaction, meta: dict, files: dict[str, bytes | None]) -> None:
    """Stage the small files in `files` (None = delete) and store.json with their checksums."""
    meta = dict(meta)
    sums = dict(meta.get("checksums", {}))
    for rel, data in files.items():
        if data is None:
            tx.delete(rel)
            sums.pop(rel, None)
        else:
            tx.write_file(rel, data)
            sums[rel] = hashlib.sha256(data).hexdigest()
    meta["checksums"] = sums
    tx.write_file(STORE_JSON, _dumps(meta))


def ensure_secret(tx: Transaction) -> bytes:
    """The store's HMAC key, staged as a fresh random one if the store has none yet."""
    if tx.store.resolve(SECRET) is not None:
        return tx.store.secret()
    secret = os.urandom(32)
    tx.write_file(SECRET, secret)
    return secret
