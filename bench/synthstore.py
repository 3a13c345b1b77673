"""Build a store of n synthetic 384-d records without a 4 GB JSONL file (bench only).

`erase ingest --vector-field` would need the vectors as JSON text (~4 GB at n = 1e6). Instead this
writes what that ingest writes — records.zarr (ids, data, idh, emb), index/XX.npy, store.json,
secret and the audit entry — through the store's own Transaction API, one slab of rows at a time,
so memory stays bounded. The embedder is recorded as "vectors:embedding", as for a BYO ingest.
Pristine stores are cached under bench/.cache/ and copied for each run (forget changes a store).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
from common import CACHE, clustered_unit, log, rid

from erase_cli import qkmeans as qk
from erase_cli.store import (
    INDEX_DTYPE,
    Transaction,
    ensure_secret,
    new_meta,
    open_store,
)

D, SEED = 384, 0
SLAB = 65536  # rows generated and staged at a time (a multiple of the store's 1024-row chunks)


def build(root: Path, n: int, text: Callable[[int], str] = "synthetic record {}".format) -> None:
    """Write the n-record store at root; record i has input text(i) and the i-th clustered_unit vector."""
    t0 = time.perf_counter()
    with open_store(root, write=True, create=True) as st:
        meta = new_meta(D, "vectors:embedding")
        with Transaction(st, "ingest") as tx:
            ensure_secret(tx)
            tx.create_arrays(D)
            index = np.zeros(n, dtype=INDEX_DTYPE)
            lo = 0
            for x in clustered_unit(n, D, seed=SEED, chunk=SLAB):
                hi = lo + len(x)
                rows = np.arange(lo, hi, dtype=np.int64)
                ids = np.array([rid(i) for i in range(lo, hi)], dtype=object)
                data = np.array(
                    [orjson.dumps({"input": text(i), "target": "t", "choices": None}).decode() for i in range(lo, hi)],
                    dtype=object,
                )
                idh = qk.id_hash64(list(ids))
                tx.write_rows("ids", n, rows, ids)
                tx.write_rows("data", n, rows, data)
                tx.write_rows("idh", n, rows, idh)
                tx.write_rows("emb", n, rows, x)
                index["idh"][lo:hi], index["row"][lo:hi] = idh, rows
                lo = hi
                log(f"staged {hi}/{n} rows")
            tx.update_index(add=index)
            tx.set_meta(meta.with_(n_slots=n, n_records=n))
            tx.commit(
                {
                    "n_added": n,
                    "n_skipped_invalid": 0,
                    "n_skipped_forgotten": 0,
                    "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3),
                }
            )
    log(f"built {root} ({n} records) in {time.perf_counter() - t0:.1f} s")


def pristine(n: int) -> Path:
    root = CACHE / f"store-{n}"
    if not (root / "store.json").exists():
        if root.exists():
            shutil.rmtree(root)
        build(root, n)
    return root


def fresh_copy(n: int, name: str) -> Path:
    """A writable copy of the pristine store of n records (forget changes the store)."""
    src = pristine(n)
    dst = CACHE / "runs" / f"{name}-{n}"
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)
    return dst


def vectors(rows: np.ndarray, n: int) -> np.ndarray:
    """float32 vectors of the given rows of the n-record store, regenerated (equal to what build()
    stored)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), D), dtype=np.float32)
    for c in np.unique(rows // SLAB):
        lo = int(c) * SLAB
        x = next(clustered_unit(n, D, seed=SEED, chunk=SLAB, first_chunk=int(c)))
        sel = rows // SLAB == c
        out[sel] = x[rows[sel] - lo]
    return out
