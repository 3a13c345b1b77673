"""Ingest, fit, forget, export, verify, status and log over a store: the core that cli.py calls.

Each function opens the store with the right lock, does its work through one Transaction and
returns a typed report (reports.py) whose to_json() is what --json prints. Progress and notices
go through callbacks so the core never prints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import orjson

from . import audit, generation, interrupts, prompt
from . import qkmeans as qk
from .durable import fsync_path
from .errors import (
    InvalidInput,
    InvalidParameter,
    NotFitted,
    StaleFit,
    StoreChanged,
    StoreDamaged,
    StoreLocked,
    StoreMissing,
)
from .reports import (
    Answer,
    ExportReport,
    FitReport,
    ForgetBatch,
    ForgetReport,
    IngestReport,
    LogReport,
    PromptReport,
    RecoverReport,
    StatusReport,
    VerifyReport,
)
from .schema import MANIFEST_FORMAT_V1, FitParams
from .store import (
    ACTIONS,
    AUDIT,
    INDEX_DIR,
    INDEX_DTYPE,
    JOURNAL_DIR,
    MANIFEST,
    STATE,
    FitMeta,
    Manifest,
    Store,
    StoreMeta,
    Transaction,
    ensure_secret,
    key_fingerprint,
    new_meta,
    open_store,
    read_key_file,
)

if TYPE_CHECKING:  # answer.py brings llm and records: only `ask` needs them at run time
    from .answer import Answerer, Question

# Memory a source may fill with the working vectors (int32) and ids of its records, so that only
# its first pass reads zarr. `erase fit` streams past 512 MiB (SPEC §7 caps its peak memory at
# half the float32 matrix); a refit inside `forget` runs up to T + 1 passes over the survivors
# and keeps them in memory up to about 2 GB (1e6 x 384 int32 is 1.5 GB).
FIT_MEMORY_BYTES = 512 * 2**20
REFIT_MEMORY_BYTES = 2 * 2**30
_ID_BYTES = 80  # a resident record beyond its vector: a short str, its pointer and its id hash
SPAN_ROWS = 8192  # slots streamed per zarr call (a multiple of the chunk rows) and rows per block
CROSSING_SAMPLE = 1000

Say = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def _quiet(_msg: str) -> None:
    pass


@dataclass
class Hooks:
    """How the core talks to people: notices and progress (both go to stderr in the CLI)."""

    say: Say = _quiet
    progress: Progress | None = None


# --------------------------------------------------------------------------- sources


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Fit and refit passes multiply (b, d) blocks by (d, k) centroids, products too skinny for a
    second BLAS thread to speed up; on a busy machine OpenBLAS's waiting thread made them slower
    instead (10,000 crossing ids at 1e6, k 16, T 10, no projection: 41.8 s wall / 38.8 s CPU with
    one thread against 82.4 s / 74.4 s with two, load 3-5). The results are exact integers either
    way, so this changes only the time."""
    try:
        from threadpoolctl import threadpool_limits  # comes with scikit-learn
    except ImportError:  # pragma: no cover - a trimmed install runs with BLAS's own threads
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class StoreSource:
    """A qkmeans.Source over the store's live rows (those a fit covers).

    Passes stream from zarr, `vectors()` reading the embeddings only, until one complete pass has
    filled the resident copy (when `memory_bytes` allows): the working vectors as int32, which
    holds them exactly (checked as they come; a source whose values do not fit keeps streaming),
    and, after a pass that reads them, the ids and id hashes. Later passes read memory only."""

    def __init__(
        self,
        store: Store,
        projector: qk.Projector,
        limit: int,
        exclude: np.ndarray | None = None,
        n: int | None = None,
        memory_bytes: int | None = None,
    ):
        """Rows below `limit` minus `exclude`; pass `n` when it is known, so that a forget that
        never streams does not read the whole index to count. `memory_bytes`: how much the
        resident copy may take (default FIT_MEMORY_BYTES)."""
        self.store = store
        self.projector = projector
        self._limit, self._exclude = limit, exclude
        self._rows: np.ndarray | None = None
        self.n = len(self.rows) if n is None else n
        budget = FIT_MEMORY_BYTES if memory_bytes is None else memory_bytes
        self._resident = self.n * (projector.d * 4 + _ID_BYTES) <= budget
        self._x: np.ndarray | None = None  # (n, d) int32, once complete
        self._ids: np.ndarray | None = None  # (n,) object, once complete
        self._idh: np.ndarray | None = None  # (n,) uint64, with _ids

    @property
    def rows(self) -> np.ndarray:
        """Sorted live rows below `limit` minus `exclude`; computed only when a pass needs them,
        so a forget that does not refit never sorts the whole index."""
        if self._rows is None:
            rows = self.store.live_rows(self._limit)
            self._rows = rows if self._exclude is None else np.setdiff1d(rows, self._exclude)
        return self._rows

    @property
    def resident(self) -> bool:
        """Whether passes now read memory only (vectors; blocks too once ids were read)."""
        return self._x is not None

    def vectors(self) -> Iterator[np.ndarray]:
        if self._x is not None:
            for lo in range(0, self.n, SPAN_ROWS):
                yield self._x[lo : lo + SPAN_ROWS].astype(np.float64)
            return
        keep = _Filling(self.n, self.projector.d) if self._resident else None
        for _, vals in self.store.iter_chunks(self.rows, ("emb",), SPAN_ROWS):
            x = self.projector(qk.to_fixed(vals["emb"]))
            if keep is not None and not keep.add(x):
                keep, self._resident = None, False  # values beyond int32: every pass streams
            yield x.astype(np.float64)
        if keep is not None:
            self._x = keep.done()

    def blocks(self) -> Iterator[qk.Block]:
        if self._x is not None and self._ids is not None and self._idh is not None:
            rows = self.rows
            for lo in range(0, self.n, SPAN_ROWS):
                sl = slice(lo, lo + SPAN_ROWS)
                x = self._x[sl]
                yield qk.Block(rows=rows[sl], ids=self._ids[sl], idh=self._idh[sl], x=x, xf=x.astype(np.float64))
            return
        have_x = self._x
        keep = _Filling(self.n, self.projector.d) if self._resident and have_x is None else None
        ids = np.empty(self.n, dtype=object) if self._resident else None
        idh = np.empty(self.n, dtype=np.uint64) if ids is not None else None
        pos = 0
        names = ("ids", "idh") if have_x is not None else ("ids", "idh", "emb")
        for part, vals in self.store.iter_chunks(self.rows, names, SPAN_ROWS):
            b = len(part)
            if have_x is not None:
                x = have_x[pos : pos + b]
            else:
                x = self.projector(qk.to_fixed(vals["emb"]))
                if keep is not None and not keep.add(x):
                    keep, self._resident = None, False  # values beyond int32: every pass streams
            h = vals["idh"].astype(np.uint64)
            if ids is not None and idh is not None and pos + b <= self.n:
                ids[pos : pos + b], idh[pos : pos + b] = vals["ids"], h
            pos += b
            yield qk.Block(rows=part, ids=vals["ids"], idh=h, x=x, xf=x.astype(np.float64))
        if pos != self.n:
            return  # qkmeans reports the mismatch; keep nothing from a pass that does not add up
        if keep is not None:
            self._x = keep.done()
        if self._x is not None and ids is not None:
            self._ids, self._idh = ids, idh


class _Filling:
    """The resident int32 copy of a source's working vectors, filled in row order by one pass."""

    def __init__(self, n: int, d: int):
        self.x = np.empty((n, d), dtype=np.int32)
        self.pos = 0

    def add(self, x: np.ndarray) -> bool:
        """Append a block; False (give up) when int32 would not hold it exactly."""
        b = len(x)
        if self.pos + b > len(self.x) or (b and int(np.abs(x).max()) > np.iinfo(np.int32).max):
            return False
        self.x[self.pos : self.pos + b] = x
        self.pos += b
        return True

    def done(self) -> np.ndarray | None:
        return self.x if self.pos == len(self.x) else None


def _vectors(store: Store, rows: np.ndarray, projector: qk.Projector) -> np.ndarray:
    return projector(qk.to_fixed(store.read_rows("emb", rows).astype(np.float32)))


# --------------------------------------------------------------------------- manifest


def _params_of(fit_meta: FitMeta) -> qk.Params:
    p = fit_meta.params
    return qk.Params(k=p.k, eps=p.eps, dim=p.dim, seed=p.seed, max_iter=p.max_iter, route_size=p.route_size)


def _fit_params(params: qk.Params) -> FitParams:
    return FitParams(
        k=params.k,
        eps=params.eps,
        dim=params.dim,
        seed=params.seed,
        max_iter=params.max_iter,
        route_size=params.route_size,
    )


def _example(rid: str, raw: bytes, cluster: int | None = None) -> dict:
    rec = orjson.loads(raw)
    item = {"id": rid, "input": rec["input"], "target": rec["target"]}
    if cluster is not None:
        item["cluster"] = cluster
    if rec.get("choices") is not None:
        item["choices"] = rec["choices"]
    return item


def build_manifest(store: Store, state: qk.State, stored_format: dict | None = None) -> Manifest:
    """The canonical manifest: sorted keys, no times or paths, byte-identical for equal states.

    A state with routes gives a format-2 manifest in `stored_format` (default: the default
    format); one from before routes gives the format-1 manifest it was written with."""
    routes = state.routes
    wanted = [rid for _, rid in state.examples] + [rid for _, route in routes for rid in route]
    unique = list(dict.fromkeys(wanted))
    data = dict(zip(unique, store.read_rows("data", store.lookup(unique)))) if unique else {}
    examples = [_example(rid, data[rid], int(cluster)) for cluster, rid in state.examples]
    p = state.params
    fields = dict(
        k=p.k,
        k_eff=int(state.k_eff),
        eps=p.eps_effective,
        dim=p.dim,
        seed=p.seed,
        max_iter=p.max_iter,
        n_records=int(state.n),
        embedder=store.meta.embedder,
        examples=examples,
        centroids=state.centroids[-1].tolist() if state.k_eff else [],
        state_digest=state.state_digest(),
    )
    if p.route_size is None:
        return Manifest(**fields, prompt_digest=prompt.digest(examples, None), format=MANIFEST_FORMAT_V1)
    fmt = stored_format or prompt.PromptFormat().stored()
    route_list = []
    for cluster, route in routes:
        # Prompt order: the member nearest the centroid last, right before the question.
        demos = [_example(rid, data[rid]) for rid in reversed(route)]
        route_list.append({"cluster": int(cluster), "examples": demos, "prompt_digest": prompt.digest(demos, fmt)})
    return Manifest(
        **fields,
        prompt_digest=prompt.digest(examples, fmt),
        route_size=p.route_size,
        prompt=dict(fmt),
        routes=route_list,
    )


def _load_state(store: Store) -> qk.State | None:
    arrays = store.state_arrays()
    return None if arrays is None else qk.State.from_arrays(arrays)


def _crossing_estimate(store: Store, state: qk.State, rows: np.ndarray, projector: qk.Projector) -> float | None:
    """Share of a hash-chosen sample of `rows` whose single deletion would cross (for `status`).

    Computed at fit and refit time and kept until the next one, so `status` never scans."""
    if state.n == 0 or len(rows) == 0:
        return None
    index = store.index()
    in_rows = index["row"][np.isin(index["row"], rows)]  # the index is in idh (hash) order
    rows = np.sort(in_rows[:CROSSING_SAMPLE])
    ids = store.read_rows("ids", rows)
    block = qk.Block(rows=rows, ids=ids, idh=qk.id_hash64(list(ids)), x=_vectors(store, rows, projector))
    return float(qk.crossing_rate(state, block))


# --------------------------------------------------------------------------- ingest


def ingest(
    root: str | Path,
    path: str | Path,
    *,
    id_field: str = "id",
    input_field: str = "input",
    target_field: str = "target",
    vector_field: str | None = None,
    embedder: str | None = None,
    batch_size: int = 64,
    append: bool = False,
    skip_invalid: bool = False,
    allow_relearn: bool = False,
    lock_timeout: float = 60.0,
    key_file: Path | None = None,
    hooks: Hooks = Hooks(),
    device: str | None = None,
    scheduler: str | None = None,
) -> IngestReport:
    """Add a JSONL file's records to the store. `device`: where the embedder runs (auto, cpu,
    cuda); `scheduler`: a Dask scheduler address (or local:N) whose workers embed the texts.

    Embedding, the long part, holds no lock, so a long ingest never makes a cron forget wait: what
    the store rules out is refused first under a shared lock (so no time is spent embedding a file
    that cannot go in), and everything is checked again under the exclusive lock just before
    writing, because a forget or another ingest may have changed the store meanwhile."""
    from .records import read_jsonl

    t0 = time.perf_counter()
    path = str(path)  # as the messages name it
    if batch_size < 1:
        raise InvalidParameter(f"--batch-size {batch_size} must be at least 1")
    records, skipped = read_jsonl(
        path,
        id_field=id_field,
        input_field=input_field,
        target_field=target_field,
        vector_field=vector_field,
        skip_invalid=skip_invalid,
    )
    seen_key = None  # fingerprint of the key of the store seen before embedding; None: no store yet
    rule = None  # (dim, embedder) the new vectors must match; None: the first vectors set them
    skipped_forgotten: list[str] = []
    try:
        with open_store(root, write=False, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file) as st:
            keep, skipped_forgotten = _admit(st, root, path, records, append, allow_relearn)
            records = [r for r, k in zip(records, keep) if k]
            seen_key, rule = key_fingerprint(st.key()), _vector_rule(st)
    except StoreMissing:
        pass  # a first ingest: nothing to check against yet (the exclusive step says if it is worse)
    vectors, name = None, None
    dask_report = None
    if records:
        vectors, name, dask_report = _embed(
            records,
            vector_field,
            embedder,
            batch_size,
            hooks,
            check=lambda dim, name: _check_vectors(rule, root, path, dim, name),
            device=device,
            scheduler=scheduler,
        )
    with open_store(
        root, write=True, create=True, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file
    ) as st:
        fresh = not st.exists
        if seen_key is not None and (fresh or key_fingerprint(st.key()) != seen_key):
            raise StoreChanged(
                f"store {root} was replaced by another store while {path} was being embedded; run the ingest again"
            )
        if not fresh:
            keep, more = _admit(st, root, path, records, append, allow_relearn)
            if more:
                records = [r for r, k in zip(records, keep) if k]
                assert vectors is not None  # embedded: the file had records
                vectors = vectors[keep]
                skipped_forgotten += more
        rule = None if fresh else _vector_rule(st)
        if records:
            assert vectors is not None and name is not None
            _check_vectors(rule, root, path, vectors.shape[1], name)
        meta = new_meta(0, "") if fresh else st.meta
        with st.transaction("ingest") as tx:
            ensure_secret(tx)
            if records:
                assert vectors is not None
                if rule is None:
                    meta = meta.with_(dim=vectors.shape[1], embedder=name)
                    if fresh or st.resolve("records.zarr/emb/zarr.json") is None:
                        tx.create_arrays(vectors.shape[1])
                meta = _stage_new_rows(tx, meta, records, vectors)
            elif fresh:
                raise InvalidInput(f"{path}: no records left to ingest (every valid record was skipped)")
            if meta.fit and records:
                meta = meta.with_(fit=meta.fit.with_(stale=True))
            if records:
                tx.update_index(add=_new_index_entries(meta, records))
            meta = meta.with_(n_records=st.n_records + len(records))
            tx.set_meta(meta)
            elapsed = (time.perf_counter() - t0) * 1000
            tx.commit(
                {
                    "n_added": len(records),
                    "n_skipped_invalid": len(skipped),
                    "n_skipped_forgotten": len(skipped_forgotten),
                    "elapsed_ms": round(elapsed, 3),
                }
            )
    return IngestReport(
        store=str(root),
        ingested=len(records),
        skipped_invalid=[{"line": s.line, "message": s.message, "ids": list(s.ids)} for s in skipped],
        skipped_forgotten=skipped_forgotten,
        stale_fit=bool(meta.fit and meta.fit.stale),
        elapsed_ms=round((time.perf_counter() - t0) * 1000, 3),
        dask=dask_report,
    )


def _admit(
    st: Store, root: str | Path, path: str, records, append: bool, allow_relearn: bool
) -> tuple[np.ndarray, list[str]]:
    """Which of `records` may go into the existing store `st` (a mask), and the ids left out
    because they were forgotten before; raises for what refuses the whole file."""
    if st.n_records and not append:
        raise InvalidInput(
            f"store {root} already has {st.n_records} records; pass --append to add {path}, or use another --store"
        )
    keep = np.ones(len(records), dtype=bool)
    skipped_forgotten = []
    forgotten = st.forgotten()
    if forgotten and not allow_relearn:
        secret = st.key()
        for i, rec in enumerate(records):
            if audit.id_hash(secret, rec.id) in forgotten:
                keep[i] = False
                skipped_forgotten.append(rec.id)
    kept = [r for r, k in zip(records, keep) if k]
    present = st.lookup([r.id for r in kept])
    if (present >= 0).any():
        dup = kept[int(np.flatnonzero(present >= 0)[0])].id
        raise InvalidInput(
            f"{path}: id {dup!r} is already in store {root}; ids must be "
            "unique (remove it from the file or forget it first)"
        ).about(dup)
    return keep, skipped_forgotten


def _vector_rule(st: Store) -> tuple[int, str] | None:
    """The (dimension, embedder) new vectors must have; None while the store has no rows yet."""
    if not (st.exists and st.n_slots):
        return None
    assert st.meta.dim is not None and st.meta.embedder is not None  # set with the first rows
    return st.meta.dim, st.meta.embedder


def _check_vectors(rule: tuple[int, str] | None, root: str | Path, path: str, dim: int, name: str) -> None:
    if rule is None:
        return
    if dim != rule[0]:
        raise InvalidInput(
            f"{path}: vectors have dimension {dim} but store {root} holds "
            f"{rule[0]}-d vectors; use the same embedder or another --store"
        )
    if name != rule[1]:
        raise InvalidInput(
            f"{path}: embedded with {name} but store {root} uses {rule[1]}; mixing "
            "embedders breaks the clustering (use the same --embedder / "
            "--vector-field, or another --store)"
        )


def _embed(
    records,
    vector_field,
    embedder,
    batch_size,
    hooks: Hooks,
    check: Callable[[int, str], None],
    device: str | None = None,
    scheduler: str | None = None,
) -> tuple[np.ndarray, str, dict | None]:
    """The records' vectors, the embedder's name and, with a scheduler, where the work ran;
    `check(dim, name)` runs before any text is embedded, so an incompatible embedder is refused
    after loading it, not after the whole file."""
    if vector_field:
        dims = {len(r.vector) for r in records}
        if len(dims) > 1:
            raise InvalidInput(f"vectors in --vector-field {vector_field} have differing lengths {sorted(dims)}")
        name = f"vectors:{vector_field}"
        check(dims.pop(), name)
        return np.stack([r.vector for r in records]).astype(np.float32), name, None
    texts = [r.input for r in records]
    if scheduler is not None:
        from . import distributed

        with distributed.connect(scheduler) as cluster, distributed.task_stream(cluster) as stream:
            vectors, name = distributed.embed_texts(cluster, texts, embedder, device, batch_size, check, hooks.progress)
        return vectors, name, _dask_report(cluster, stream)
    from .embed import load_embedder

    model = load_embedder(embedder, device)
    check(model.dim, model.name)
    parts, done = [], 0
    for batch in model.embed(texts, batch_size):
        parts.append(batch)
        done += len(batch)
        if hooks.progress:
            hooks.progress("embedding", done, len(texts))
    return np.concatenate(parts).astype(np.float32), model.name, None


def _dask_report(cluster, stream: list[dict]) -> dict:
    return {
        "scheduler": cluster.address,
        "workers": cluster.n_workers,
        "tasks_by_worker": cluster.tasks_by_worker(stream),
    }


def _stage_new_rows(tx: Transaction, meta: StoreMeta, records, vectors: np.ndarray) -> StoreMeta:
    ids = np.array([r.id for r in records], dtype=object)
    data = np.array(
        [orjson.dumps({"input": r.input, "target": r.target, "choices": r.choices}).decode() for r in records],
        dtype=object,
    )
    n_slots = tx.append_rows(meta.n_slots, ids=ids, data=data, idh=qk.id_hash64(list(ids)), emb=vectors)
    return meta.with_(n_slots=n_slots)


def _new_index_entries(meta: StoreMeta, records) -> np.ndarray:
    new = np.zeros(len(records), dtype=INDEX_DTYPE)
    new["idh"] = qk.id_hash64([r.id for r in records])
    new["row"] = np.arange(meta.n_slots - len(records), meta.n_slots)
    return new


def id_hasher(root: Path, *, lock_timeout: float = 60.0, key_file: Path | None = None) -> Callable[[str], str] | None:
    """The keyed hash of an id under the store's key (audit.id_hash: what forgotten.json and the
    audit log hold), for output that must not show ids (--redact-ids). Before the store exists
    the key is that of --secret-file; None when there is no key at all yet."""
    try:
        with open_store(root, write=False, lock_timeout=lock_timeout, key_file=key_file) as st:
            key = st.key()
    except StoreMissing:
        if key_file is None:
            return None
        key = read_key_file(key_file)
    return lambda record_id: audit.id_hash(key, record_id)


# --------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class FitChoices:
    """What `erase fit` was asked for; None (and "auto" for dim) means: what the store's previous
    fit used, or the default when there is none. So a refit after `ingest --append` keeps the
    parameters and prompt format instead of silently resetting them."""

    k: int | None = None
    eps: float | None = None
    dim: int | None | str = "auto"  # an int, None (no projection) or "auto"
    seed: int | None = None
    max_iter: int | None = None
    route_size: int | None = None
    instruction: str | None = None
    input_prefix: str | None = None
    output_prefix: str | None = None
    separator: str | None = None

    def resolve(self, previous: FitMeta | None, d_in: int) -> tuple[qk.Params, dict, list[str]]:
        """(params, prompt format, names taken from the previous fit)."""
        from . import config

        old = previous.params if previous else None
        reused: list[str] = []

        def pick(name: str, given, default):
            if given is not None:
                return given
            stored = getattr(old, name) if old is not None else None
            if stored is not None:
                reused.append(name)
                return stored
            return default

        if self.dim != "auto":
            dim = self.dim
        elif old is not None:
            dim = old.dim
            reused.append("dim")
        else:
            dim = config.DEFAULT_DIM if d_in > config.DEFAULT_DIM else None
        assert not isinstance(dim, str), f"dim must be an int, None or 'auto', not {dim!r}"
        params = qk.Params(
            k=pick("k", self.k, config.DEFAULT_K),
            eps=pick("eps", self.eps, config.DEFAULT_EPS),
            dim=dim,
            seed=pick("seed", self.seed, config.DEFAULT_SEED),
            max_iter=pick("max_iter", self.max_iter, config.DEFAULT_MAX_ITER),
            route_size=pick("route_size", self.route_size, config.DEFAULT_ROUTE_SIZE),
        )
        stored = (previous.prompt if previous else None) or {}
        default = prompt.PromptFormat().stored()
        fmt = {}
        for name in prompt.PROMPT_FIELDS:
            given = getattr(self, name)
            if given is None and name in stored:
                reused.append(name)
            fmt[name] = given if given is not None else stored.get(name, default[name])
        order = ["k", "eps", "dim", "seed", "max_iter", "route_size", *prompt.PROMPT_FIELDS]
        return params, fmt, sorted(reused, key=order.index)


def fit(
    root: str | Path,
    *,
    lock_timeout: float = 60.0,
    key_file: Path | None = None,
    hooks: Hooks = Hooks(),
    scheduler: str | None = None,
    **choices,
) -> FitReport:
    """Fit the store. `choices` are FitChoices' fields (k, eps, dim, seed, max_iter, route_size,
    instruction, input_prefix, output_prefix, separator); those not given keep the previous
    fit's value or take the default. `scheduler`: a Dask scheduler address (or local:N) whose
    workers run the passes; the result is the local fit's, bit for bit."""
    t0 = time.perf_counter()
    dask_report = None
    with (
        open_store(root, write=True, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file) as st,
        contextlib.ExitStack() as dask_stack,
    ):
        d_in = st.dim or 1
        params, fmt, reused = FitChoices(**choices).resolve(st.meta.fit, d_in)
        params.validate(d_in)
        projector = qk.Projector(d_in, params.dim, params.seed)
        rows = st.live_rows()
        old_manifest = st.manifest()
        warnings = []
        if len(rows) == 0:
            state = qk.State.empty(params, d_in)
            warnings.append(
                f"store {root} has no records: wrote the empty fit, so 'erase ask' "
                "answers zero-shot; ingest records, then fit again"
            )
        elif scheduler is not None:
            from . import distributed

            cluster = dask_stack.enter_context(distributed.connect(scheduler))
            with distributed.task_stream(cluster) as stream:
                state = qk.fit(_dask_runner(cluster, st, rows, projector), params, d_in, hooks.progress)
            dask_report = _dask_report(cluster, stream)
            dask_stack.close()  # the workers are done: stop a local cluster before writing
        else:
            with _one_blas_thread():
                state = qk.fit(StoreSource(st, projector, st.n_slots), params, d_in, hooks.progress)
        if 0 < len(rows) < params.k:
            warnings.append(
                f"-k {params.k} is more than the {len(rows)} records in the store: the fit has "
                f"{state.k_eff} clusters, one per record, so every record is a "
                "demonstration; lower -k or ingest more records"
            )
        manifest = build_manifest(st, state, fmt)
        estimate = _crossing_estimate(st, state, rows, projector)
        meta = st.meta.with_(
            fit=FitMeta(
                params=_fit_params(params), fit_rows=st.n_slots, stale=False, crossing_estimate=estimate, prompt=fmt
            ),
            counters=dict(st.meta.counters, refits=0),
        )
        with st.transaction("fit") as tx:
            tx.set_fit(state.to_arrays(), manifest)
            # Cache files are named by prompt digest: those of prompts the new fit no longer
            # serves go, the others stay valid.
            tx.delete_cache(keep=manifest.digests)
            tx.set_meta(meta)
            elapsed = (time.perf_counter() - t0) * 1000
            tx.commit(
                {
                    "params": _fit_params(params).to_json(),
                    "n_records": int(state.n),
                    "k_eff": int(state.k_eff),
                    "prompt_digest_before": old_manifest and old_manifest.prompt_digest,
                    "prompt_digest_after": manifest.prompt_digest,
                    "state_digest_before": old_manifest and old_manifest.state_digest,
                    "state_digest_after": manifest.state_digest,
                    "elapsed_ms": round(elapsed, 3),
                }
            )
    return FitReport(
        store=str(root),
        n_records=int(state.n),
        k=params.k,
        k_eff=int(state.k_eff),
        eps=params.eps_effective,
        dim=params.dim,
        seed=params.seed,
        max_iter=params.max_iter,
        route_size=params.route_size,
        prompt_format=fmt,
        reused=reused,
        examples=[{"cluster": c, "id": i} for c, i in state.examples],
        routes=[{"cluster": j, "ids": ids} for j, ids in state.routes],
        prompt_digest=manifest.prompt_digest,
        state_digest=manifest.state_digest,
        crossing_estimate=estimate,
        warnings=warnings,
        elapsed_ms=round((time.perf_counter() - t0) * 1000, 3),
        dask=dask_report,
    )


def _dask_runner(cluster, st: Store, rows: np.ndarray, projector: qk.Projector):
    """A Runner whose parts are tasks on `cluster`, over the store's sorted rows `rows`; the parts
    stay in the workers' memory under the budget a local fit keeps in memory."""
    from . import distributed
    from .store import CHUNK_ROWS

    in_memory = len(rows) * projector.d * 8 <= FIT_MEMORY_BYTES
    return distributed.DaskRunner(cluster, st.root, st.meta, rows, projector, in_memory, CHUNK_ROWS)


# --------------------------------------------------------------------------- forget


def forget(
    root: str | Path,
    ids: list[str],
    *,
    dry_run: bool = False,
    lock_timeout: float = 60.0,
    key_file: Path | None = None,
    hooks: Hooks = Hooks(),
    scheduler: str | None = None,
) -> ForgetReport:
    """Forget one batch. Returns the SPEC 3 report; `ids[*].status` says what happened to each.
    `scheduler`: a Dask scheduler (or local:N) for the passes of a refit, contacted only if the
    batch crosses; everything else a forget does stays in this process.

    Ids are matched exactly as given, never stripped. An empty batch (a cron job's empty id file)
    changes nothing and logs nothing; the store is still opened, so a wrong --store is reported."""
    t0 = time.perf_counter()
    ids = list(dict.fromkeys(ids))  # one batch is a set; keep the caller's order for the report
    if not ids:
        with open_store(root, write=False, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file) as st:
            # Loads store.json and the key: a damaged or mis-keyed store is reported even when
            # there is nothing to do, so a cron job learns of it on its next (empty) run.
            st.key()
            current = _generation(st)
        return ForgetReport(
            ForgetBatch(
                crossings=[],
                action="none",
                prompt_changed=False,
                purged=[],
                dry_run=dry_run,
                elapsed_ms=round((time.perf_counter() - t0) * 1000, 3),
                n_forgotten=0,
            ),
            generation=current,
        )
    with open_store(root, write=not dry_run, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file) as st:
        rows = st.lookup(ids)
        secret = st.key()
        forgotten = st.forgotten()
        hashes = [audit.id_hash(secret, i) for i in ids]
        statuses = []
        for rid, row, h in zip(ids, rows, hashes):
            found = "would_forget" if dry_run else "forgotten"
            status = found if row >= 0 else ("already_forgotten" if h in forgotten else "not_found")
            statuses.append({"id": rid, "status": status})
        _whitespace_hints(st, statuses)
        known = rows >= 0
        kids = [i for i, k in zip(ids, known) if k]
        krows = rows[known]
        meta = st.meta
        fit_meta = meta.fit
        state = _load_state(st) if fit_meta else None
        old_manifest = st.manifest() if fit_meta else None
        cert, new_state = None, state
        if state is not None and len(krows):
            assert fit_meta is not None  # a state exists only with a fit
            covered = krows < fit_meta.fit_rows
            cids = [i for i, c in zip(kids, covered) if c]
            if cids:
                projector = qk.Projector(state.d_in, state.params.dim, state.params.seed)
                x = _vectors(st, krows[covered], projector)
                if dry_run:
                    cert = qk.certify(state, cids, x)
                else:
                    survivors = StoreSource(
                        st,
                        projector,
                        fit_meta.fit_rows,
                        exclude=krows[covered],
                        n=state.n - len(cids),
                        memory_bytes=REFIT_MEMORY_BYTES,
                    )
                    with contextlib.ExitStack() as dask_stack, _one_blas_thread():
                        new_state, cert = qk.forget(
                            state, cids, x, _refit_runner(survivors, scheduler, dask_stack), hooks.progress
                        )
        refit = cert is not None and cert.action_needed == "refit"
        example_ids = {i for _, i in state.examples} if state is not None else set()
        hit_example = bool(example_ids & set(kids))
        batch = ForgetBatch(
            crossings=[{"iteration": int(t), "cluster": int(j)} for t, j in (cert.crossings if cert else [])],
            action="refit" if refit else ("replace_example" if hit_example else "none"),
            prompt_changed=None,
            purged=[],
            dry_run=dry_run,
            elapsed_ms=None,
            n_forgotten=len(kids),
        )
        report = ForgetReport(batch, statuses, _generation(st))
        if dry_run:
            batch.prompt_changed = refit or hit_example
            batch.prompt_changed_is_estimate = refit and not hit_example
            # Without a crossing a route changes exactly when it loses a member; a refit may
            # change more (the estimate flag says so).
            gone = set(kids)
            batch.routes_changed = [j for j, route in (state.routes if state else []) if gone & set(route)]
            batch.elapsed_ms = round((time.perf_counter() - t0) * 1000, 3)
            return report
        if not len(krows):
            batch.prompt_changed = False
            batch.elapsed_ms = round((time.perf_counter() - t0) * 1000, 3)
            return report
        with st.transaction("forget") as tx:
            # The records' bytes go, then every trace of them: index entries, the fit, the cache.
            purged = tx.purge_rows(krows) + [INDEX_DIR]
            tx.update_index(remove_rows=krows, remove_idh=qk.id_hash64(kids))
            tx.set_forgotten(forgotten | {h for h, k in zip(hashes, known) if k})
            meta = meta.with_(n_records=st.n_records - len(kids), n_forgotten=meta.n_forgotten + len(kids)).counted(
                forget_batches=1
            )
            prompt_changed = False
            new_manifest = None
            if new_state is not None:
                assert old_manifest is not None and fit_meta is not None  # the state came from a fit
                new_manifest = build_manifest(st, new_state, fit_meta.prompt)
                prompt_changed = new_manifest.prompt_digest != old_manifest.prompt_digest
                batch.routes_changed = _routes_changed(old_manifest, new_manifest)
                purged += tx.set_fit(new_state.to_arrays(), new_manifest)
                if refit:
                    projector = qk.Projector(new_state.d_in, new_state.params.dim, new_state.params.seed)
                    meta = meta.counted(crossing_batches=1, refits=1).with_(
                        fit=fit_meta.with_(
                            crossing_estimate=_crossing_estimate(st, new_state, survivors.rows, projector)
                        )
                    )
                if hit_example and not refit:
                    meta = meta.counted(examples_replaced=1)
                if prompt_changed:
                    meta = meta.counted(prompt_changes=1)
                if batch.routes_changed:
                    meta = meta.counted(route_changes=len(batch.routes_changed), route_change_batches=1)
                # Only the caches of prompts that changed go (they hold the forgotten
                # demonstrations); a route the batch did not touch keeps its cached prefix.
                purged += tx.delete_cache(keep=new_manifest.digests)
            tx.set_meta(meta)
            elapsed = round((time.perf_counter() - t0) * 1000, 3)
            batch.prompt_changed, batch.purged, batch.elapsed_ms = prompt_changed, purged, elapsed
            tx.commit(
                {
                    "id_hashes": sorted(h for h, k in zip(hashes, known) if k),
                    "crossings": batch.crossings,
                    "action_taken": batch.action,
                    "prompt_changed": prompt_changed,
                    "routes_changed": batch.routes_changed,
                    "prompt_digest_before": old_manifest and old_manifest.prompt_digest,
                    "prompt_digest_after": new_manifest and new_manifest.prompt_digest,
                    "state_digest_before": old_manifest and old_manifest.state_digest,
                    "state_digest_after": new_manifest and new_manifest.state_digest,
                    "purged": purged,
                    "n_forgotten": len(kids),
                    "elapsed_ms": elapsed,
                }
            )
        report.generation = _generation(st)  # the manifest this forget wrote
    return report


def _refit_runner(survivors: StoreSource, scheduler: str | None, stack: contextlib.ExitStack):
    """The survivors as a forget's refit reads them: in this process, or, with a scheduler, as
    tasks on a cluster that is connected to only when a pass is needed (most forgets need none)."""
    if scheduler is None:
        return survivors
    from . import distributed

    def connect() -> qk.Runner:
        cluster = stack.enter_context(distributed.connect(scheduler))
        return _dask_runner(cluster, survivors.store, survivors.rows, survivors.projector)

    return distributed.LazyRunner(survivors.n, connect)


def _generation(st: Store) -> str | None:
    current = generation.read_locked(st).generation
    return None if current is None else str(current)


def _routes_changed(old: Manifest, new: Manifest) -> list[int]:
    """Clusters whose route prompt is not the same before and after (a route that appears or
    disappears counts as changed)."""
    before = {r["cluster"]: r["prompt_digest"] for r in old.routes}
    after = {r["cluster"]: r["prompt_digest"] for r in new.routes}
    return sorted(j for j in before.keys() | after.keys() if before.get(j) != after.get(j))


WHITESPACE_HINT = (
    "the store has this id without its leading or trailing whitespace; ids are "
    "matched exactly (erase never strips them), so fix the id list"
)


def _whitespace_hints(st: Store, statuses: list[dict]) -> None:
    """A hint on each unknown id whose stripped form is in the store: an id file written with
    stray spaces would otherwise silently forget nothing. Only a hint: the id is never changed."""
    batch = {item["id"] for item in statuses}
    suspects = [
        item
        for item in statuses
        if item["status"] == "not_found"
        and item["id"].strip() != item["id"]
        and item["id"].strip()
        and item["id"].strip() not in batch
    ]  # that one has its own status
    if not suspects:
        return
    for item, row in zip(suspects, st.lookup([item["id"].strip() for item in suspects])):
        if row >= 0:
            item["hint"] = WHITESPACE_HINT


# --------------------------------------------------------------------------- read-only


def _fitted(st: Store, root: str | Path) -> FitMeta:
    """The fit's metadata, after checking that the store has a fresh fit."""
    fit_meta = st.meta.fit
    if not fit_meta:
        raise NotFitted(f"store {root} has no fit yet; run 'erase fit'")
    if fit_meta.stale:
        raise StaleFit(f"the fit of store {root} is stale (records were appended since); run 'erase fit'")
    return fit_meta


def _fitted_manifest(st: Store, root: str | Path) -> Manifest:
    """The manifest of a fresh fit (a fit without its manifest is damage)."""
    _fitted(st, root)
    manifest = st.manifest()
    if manifest is None:
        raise StoreDamaged(f"damaged store: {st.root / MANIFEST} is missing; run 'erase fit' to rewrite it")
    return manifest


def verify(
    root: str | Path, *, lock_timeout: float = 60.0, key_file: Path | None = None, hooks: Hooks = Hooks()
) -> VerifyReport:
    """Check every file the store must have, then refit from scratch on the stored embeddings of
    the remaining records and compare."""
    t0 = time.perf_counter()
    with open_store(root, write=False, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file) as st:
        st.check_files()
        fit_meta = _fitted(st, root)
        state = _load_state(st)
        if state is None:
            raise StoreDamaged(f"damaged store: {st.root / STATE} is missing; run 'erase fit'")
        params = _params_of(fit_meta)
        rows = st.live_rows(fit_meta.fit_rows)
        projector = qk.Projector(state.d_in, params.dim, params.seed)
        if len(rows):
            with _one_blas_thread():
                fresh = qk.fit(StoreSource(st, projector, fit_meta.fit_rows), params, state.d_in, hooks.progress)
        else:
            fresh = qk.State.empty(params, state.d_in)
        differences = state.differences(fresh)
        stored_manifest = st.manifest_bytes()
        if stored_manifest != build_manifest(st, fresh, fit_meta.prompt).to_bytes():
            differences.append("manifest.json differs from the manifest of a fresh fit")
    return VerifyReport(
        identical=not differences,
        differences=differences,
        n_records=int(fresh.n),
        state_digest=fresh.state_digest(),
        elapsed_ms=round((time.perf_counter() - t0) * 1000, 3),
        quoted_ids=_state_ids(state, fresh) if differences else [],
    )


def _state_ids(*states: qk.State) -> list[str]:
    """Every record id that State.differences can quote: the initial centres and the candidates
    (examples are the candidates' first ids)."""
    return sorted({i for s in states for i in s.init_ids + [c for cands in s.candidates for c in cands]})


def _pending(st: Store) -> dict | None:
    """An interrupted operation on disk, for `status`: a committed forget still has the
    forgotten records' bytes on disk until a writing command (or `erase recover`) completes it."""
    if st.pending is not None:
        lingering = st.pending.action == "forget"
        return {"action": st.pending.action, "committed": True, "forgotten_data_on_disk": lingering}
    if (st.root / JOURNAL_DIR).exists():
        return {"committed": False}
    return None


def status(
    root: str | Path, *, lock_timeout: float = 60.0, key_file: Path | None = None, hooks: Hooks = Hooks()
) -> StatusReport:
    with open_store(root, write=False, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file) as st:
        meta = st.meta
        manifest = st.manifest()
        fit_meta = meta.fit
        cache = st.cache_dir()
        cache_files = sorted(p.name for p in cache.glob("*.kv")) if cache.is_dir() else []
        out = StatusReport(
            store=str(st.root),
            format=meta.format,
            records=st.n_records,
            forgotten=len(st.forgotten()),  # distinct ids, not forget events
            embedder=meta.embedder,
            dimension=meta.dim,
            size_bytes=st.size_bytes(),
            fit=None,
            counters=meta.counters,
            cache={"files": len(cache_files), "prompt_digest": manifest.prompt_digest if manifest else None},
            pending=_pending(st),
            audit_head=meta.audit_head,
        )
        if fit_meta:
            out.fit = {
                **dict(sorted(fit_meta.params.to_json().items())),  # as store.json lists them
                "eps_effective": manifest.eps if manifest else None,
                "stale": fit_meta.stale,
                "n_records": manifest.n_records if manifest else None,
                "k_eff": manifest.k_eff if manifest else None,
                "examples": [
                    {"cluster": e["cluster"], "id": e["id"], "target": _label(e), "input_start": _start(e["input"])}
                    for e in (manifest.examples if manifest else [])
                ],
                "label_balance": _balance(manifest.examples if manifest else []),
                "routes": [
                    {
                        "cluster": r["cluster"],
                        "ids": [e["id"] for e in r["examples"]],
                        "label_balance": _balance(r["examples"]),
                        "prompt_digest": r["prompt_digest"],
                    }
                    for r in (manifest.routes if manifest else [])
                ],
                "crossing_estimate": fit_meta.crossing_estimate,
                "prompt_digest": manifest.prompt_digest if manifest else None,
                "state_digest": manifest.state_digest if manifest else None,
            }
    return out


INPUT_START = 40  # characters of a demonstration's input that `status` shows


def _label(example: dict) -> str:
    """The target a demonstration shows (the first of several acceptable ones)."""
    target = example["target"]
    return target if isinstance(target, str) else str(target[0])


def _start(text: str) -> str:
    return text if len(text) <= INPUT_START else text[: INPUT_START - 1] + "…"


def _balance(examples: list[dict]) -> dict[str, int]:
    """How many demonstrations show each target, most frequent first (ties by target)."""
    counts: dict[str, int] = {}
    for example in examples:
        counts[_label(example)] = counts.get(_label(example), 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def log(
    root: Path,
    *,
    check: bool = False,
    expect_head: str | None = None,
    last: int | None = None,
    since: str | None = None,
    actions: list[str] | None = None,
    lock_timeout: float = 60.0,
    key_file: Path | None = None,
    hooks: Hooks = Hooks(),
) -> LogReport:
    """The audit entries; with `check`, the chain's problems: entries of a format-2 store are
    verified with its key from `audit_keyed_from` on, against the head that store.json (itself
    under the key) records, and against `expect_head`, a hash an operator kept elsewhere.

    `actions`, `since` (an ISO date or datetime, UTC unless it says otherwise) and `last` (the
    newest N of what is left) choose the entries returned, nothing else: the chain is always
    verified whole, since a filtered view of a chain proves nothing."""
    wanted = _check_actions(actions)
    after = parse_since(since) if since is not None else None
    if last is not None and last < 0:
        raise InvalidParameter(f"-n {last} must be 0 or more (the number of newest entries to show)")
    with open_store(root, write=False, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file) as st:
        entries = st.audit_entries()
        meta = st.meta
        head = meta.audit_head
        keyed = st.format_version >= 2
        key = st.key() if check and keyed else None
        if check and head is not None and not entries and not (st.root / AUDIT).exists():
            hooks.say(f"the audit log {st.root / AUDIT} is missing")
    problems = (
        audit.verify_chain(
            entries,
            head=head,
            key=key,
            keyed_from=(meta.audit_keyed_from or 0) if keyed else 0,
            expect_head=expect_head,
        )
        if check
        else []
    )
    shown = [
        e
        for e in entries
        if (wanted is None or e.get("action") in wanted) and (after is None or _entry_after(e, after))
    ]
    if last is not None:
        shown = shown[len(shown) - last :] if last else []
    return LogReport(
        entries=shown, total=len(entries), problems=problems, valid=not problems if check else None, head=head
    )


def _check_actions(actions: list[str] | None) -> set[str] | None:
    if not actions:
        return None
    unknown = sorted(set(actions) - ACTIONS)
    if unknown:
        raise InvalidParameter(
            f"--action {unknown[0]!r} is not an audit action; use one of {', '.join(sorted(ACTIONS))}"
        )
    return set(actions)


def parse_since(text: str) -> datetime:
    """An ISO 8601 date (midnight) or date and time; UTC unless it carries an offset."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidParameter(
            f"--since {text!r} is not an ISO date or datetime; use e.g. 2026-01-31 "
            "or 2026-01-31T09:30:00Z (UTC unless an offset is given)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _entry_after(entry: dict, after: datetime) -> bool:
    """Whether the entry was written at or after `after`. An entry whose time does not parse (an
    edited log) is always shown: a filter must not hide what looks wrong."""
    try:
        when = datetime.fromisoformat(str(entry.get("time")))
    except ValueError:
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when >= after


def recover(
    root: Path, *, lock_timeout: float = 60.0, key_file: Path | None = None, hooks: Hooks = Hooks()
) -> RecoverReport:
    """Complete a committed interrupted operation or roll back an uncommitted one, and nothing
    else (no upgrade, no other change)."""
    with open_store(
        root, write=True, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file, upgrade=False
    ) as st:
        recovered = st.recovered
    return RecoverReport(store=str(st.root), recovered=recovered)


# --------------------------------------------------------------------------- export

EXPORT_ATTEMPTS = 3


def export(
    root: Path,
    output: Path | None,
    *,
    stream: BinaryIO | None = None,
    vectors: bool = False,
    force: bool = False,
    lock_timeout: float = 60.0,
    key_file: Path | None = None,
    hooks: Hooks = Hooks(),
) -> ExportReport:
    """Write the surviving records as JSONL (id, input, target, choices if any, and with
    `vectors` the stored embedding as `vector`, exact as float64 text) to the new file `output`,
    or, when `output` is None, to `stream`.

    An export is a copy that no later forget can purge, so it is audited, and the audit entry is
    committed before the copy exists: a failure in between over-reports an export, never hides
    one. (1) Under the shared lock the survivors are streamed chunk by chunk into an owner-only
    file created exclusively (next to `output`, so that publishing it is a rename; an unnamed
    temporary file for `stream`). (2) Under the exclusive lock, if no command added or forgot
    records meanwhile (else the read is repeated), an `export` entry is committed; it changes no
    data file, only store.json's audit head. (3) The file is linked into place, never over an
    existing file unless `force`, or copied to `stream`. However it ends short of that, no
    spooled file is left beside `output` (see _spool).

    When `stream` is closed by its reader (`erase export --output - | head -1`), BrokenPipeError
    propagates and the audit entry stays: some records may have been read."""
    t0 = time.perf_counter()
    root = Path(root)
    if output is not None:
        output = _check_export_path(root, Path(output), force)
    for _attempt in range(EXPORT_ATTEMPTS):
        with _spool(output) as (handle, path):
            n, seen = _spool_survivors(root, handle, vectors, lock_timeout, key_file, hooks)
            if output is not None:
                _check_export_path(root, output, force)  # fail before auditing if it appeared
            entry = _audit_export(
                root,
                seen,
                {
                    "n_records": n,
                    "vectors": vectors,
                    "to": "stdout" if output is None else "file",
                    "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3),
                },
                lock_timeout,
                key_file,
                hooks,
            )
            if entry is not None:
                size = _publish(handle, path, output, stream, force)
                break
        hooks.say(f"store {root} changed while it was read for the export; reading it again")
    else:
        raise StoreLocked(
            f"store {root} kept changing while the export was read (other erase "
            "commands are adding or forgetting records); nothing was exported, "
            "run 'erase export' again later"
        )
    warnings = []
    if n == 0:
        warnings.append(f"store {root} has no records: the export is empty")
    return ExportReport(
        store=str(root),
        output="-" if output is None else str(output),
        records=n,
        vectors=vectors,
        bytes=size,
        audit_hash=entry["hash"],
        warnings=warnings,
        elapsed_ms=round((time.perf_counter() - t0) * 1000, 3),
    )


def _check_export_path(root: Path, output: Path, force: bool) -> Path:
    parent = output.parent
    if not parent.is_dir():
        raise InvalidParameter(
            f"--output {output}: directory {parent} does not exist; create it or choose another --output"
        )
    if output.is_dir():
        raise InvalidParameter(f"--output {output} is a directory; name a file to create")
    store_dir = root.resolve() if root.exists() else None
    if store_dir is not None and (parent.resolve() == store_dir or store_dir in parent.resolve().parents):
        raise InvalidParameter(
            f"--output {output} is inside store {root}, where no forget would ever "
            "purge it; write the export outside the store"
        )
    if os.path.lexists(output) and not force:
        raise InvalidParameter(
            f"--output {output} already exists; pass --force to replace it, or choose another --output"
        )
    return output


@contextlib.contextmanager
def _spool(output: Path | None) -> Iterator[tuple[BinaryIO, Path | None]]:
    """The file an export is written to before it is audited and published: owner-only and
    created exclusively beside `output` (so that publishing is a rename on the same filesystem),
    or unnamed (deleted on close) when the export goes to a stream. A named one is removed on
    every way out but publishing: an error, a signal before the commit point, a retry, and a
    second signal that ends the process after it (interrupts.removing); only a SIGKILL or a
    power cut can leave `.NAME.XXXX.partial` behind."""
    if output is None:
        with tempfile.TemporaryFile() as handle:
            yield handle, None
        return
    path = None
    try:
        # Deferred: a signal between creating the file and learning its name would leave it.
        with interrupts.deferred():
            try:
                fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".partial")
            except OSError as exc:
                raise InvalidParameter(
                    f"cannot create a file beside --output {output}: {exc.strerror}; choose a writable directory"
                ) from None
            path = Path(name)
            handle = os.fdopen(fd, "w+b")
        with handle, interrupts.removing(path):
            os.fchmod(handle.fileno(), 0o600)
            yield handle, path
    finally:
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # gone already once published


def _spool_survivors(
    root: Path, out: BinaryIO, vectors: bool, lock_timeout: float, key_file: Path | None, hooks: Hooks
) -> tuple[int, tuple[int, int]]:
    """Write every live record to `out`, chunk by chunk, under the shared lock; returns the
    count and the record-set marker it was read at."""
    names = ("ids", "data", "emb") if vectors else ("ids", "data")
    n = 0
    with open_store(root, write=False, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file) as st:
        seen = st.meta.record_set
        rows = st.live_rows()
        for part, vals in st.iter_chunks(rows, names):
            lines = []
            for i in range(len(part)):
                rec = orjson.loads(vals["data"][i])
                item = {"id": vals["ids"][i], "input": rec["input"], "target": rec["target"]}
                if rec.get("choices") is not None:
                    item["choices"] = rec["choices"]
                if vectors:
                    # float64 text of a float32 value is exact: it reads back bit for bit.
                    item["vector"] = vals["emb"][i].astype(np.float64).tolist()
                lines.append(orjson.dumps(item))
            out.write(b"\n".join(lines) + b"\n")
            n += len(part)
            if hooks.progress:
                hooks.progress("exporting", n, len(rows))
        out.flush()
        os.fsync(out.fileno())
    return n, seen


def _audit_export(
    root: Path, seen: tuple[int, int], details: dict, lock_timeout: float, key_file: Path | None, hooks: Hooks
) -> dict | None:
    """Commit the `export` audit entry (store.json with the new head, no data file), or None if
    records were added or forgotten since `seen`: the spooled copy might hold a record that is
    gone now."""
    with open_store(root, write=True, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file) as st:
        if st.meta.record_set != seen:
            return None
        with st.transaction("export") as tx:
            tx.set_meta(st.meta)
            return tx.commit(details)


def _publish(handle: BinaryIO, path: Path | None, output: Path | None, stream: BinaryIO | None, force: bool) -> int:
    """Make the spooled export visible; returns its size in bytes."""
    size = handle.seek(0, os.SEEK_END)
    if output is None:
        assert stream is not None  # --output - writes to the given stream
        handle.seek(0)
        shutil.copyfileobj(handle, stream)
        stream.flush()
        return size
    handle.close()
    assert path is not None  # a file output was spooled to a file
    if force:
        os.replace(path, output)
    else:
        try:
            os.link(path, output)  # fails if the name exists: never replaces a file by surprise
        except FileExistsError:
            raise InvalidParameter(
                f"--output {output} appeared while exporting; nothing was "
                "written there (the audit trail records the export anyway); "
                "pass --force or choose another --output"
            ) from None
        path.unlink()
    fsync_path(output.parent)
    return size


# --------------------------------------------------------------------------- ask


def ask(
    root: str | Path,
    questions: Iterable[Question],
    *,
    mode: str = "auto",
    model: str | None = None,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    max_tokens: int = 64,
    lock_timeout: float = 60.0,
    key_file: Path | None = None,
    hooks: Hooks = Hooks(),
    generator_factory=None,
    device: str | None = None,
) -> Iterator[Answer]:
    """`erase ask`: answer questions with the fitted demonstrations, one answer.Answerer for
    them all (see it for the modes, the prefix cache and how answers follow a forget).

    The store, the fit, the mode and the model are checked here, before the first answer; a
    stale fit is refused. When the fit has no demonstrations (it was made on an empty store)
    every answer carries a `warning`: it is a zero-shot answer. `generator_factory` replaces
    the model (tests)."""
    from .answer import Answerer

    answerer = Answerer(
        root,
        mode=mode,
        model=model,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_gpu_layers=n_gpu_layers,
        device=device,
        max_tokens=max_tokens,
        lock_timeout=lock_timeout,
        key_file=key_file,
        on_message=hooks.say,
        generator_factory=generator_factory,
    )
    return _answering(answerer, questions)


def _answering(answerer: Answerer, questions: Iterable[Question]) -> Iterator[Answer]:
    with answerer:
        yield from answerer.answer_many(questions)


def show_prompt(
    root: str | Path,
    question: str | None = None,
    *,
    route: int | None = None,
    mode: str = "auto",
    vector: np.ndarray | None = None,
    choices: list[str] | None = None,
    lock_timeout: float = 60.0,
    key_file: Path | None = None,
    hooks: Hooks = Hooks(),
) -> PromptReport:
    """The exact text the model would get: route J's prompt with `route`, the prompt `mode` picks
    for `question` (followed by the question) with one, and the global prompt otherwise."""
    from .routing import PromptChoice, Router, global_choice, question_embedder, resolve_mode

    with open_store(root, write=False, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file) as st:
        manifest = _fitted_manifest(st, root)
        d_in = st.dim or 0
        embedder_name = st.meta.embedder
    if route is not None:
        chosen = manifest.route(route)
        if chosen is None:
            have = ", ".join(str(r["cluster"]) for r in manifest.routes) or "none (fit from before routes)"
            raise InvalidParameter(f"--route {route} is not a route of this fit (routes: {have}); pick one of them")
        choice = PromptChoice("routed", route, list(chosen["examples"]), chosen["prompt_digest"])
    elif question is not None and resolve_mode(mode, manifest) == "routed":
        choice = Router(manifest, d_in, question_embedder(embedder_name)).choose(question, vector)
    else:
        resolve_mode(mode, manifest)  # a bad --mode is an error even without a question
        choice = global_choice(manifest)
    fmt = prompt.PromptFormat.from_stored(manifest.prompt)
    text = prompt.prefix_text(fmt, choice.examples)
    if question is not None:
        text += prompt.query_text(fmt, question, choices)
    return PromptReport(
        mode=choice.mode,
        route=choice.route,
        prompt_digest=choice.prompt_digest,
        examples=[{"id": e["id"], "target": _label(e)} for e in choice.examples],
        text=text,
    )


# --------------------------------------------------------------------------- cost


def cost(
    root: Path,
    *,
    queries_per_deletion: float = 1000.0,
    sisa_shards: int = 5,
    sisa_epochs: float = 3.0,
    train_multiplier: float = 3.0,
    n_questions: int = 20,
    repeats: int = 3,
    warmup: int = 3,
    tokens_per_example: float | None = None,
    per_token_s: float | None = None,
    finetuned_query_s: float | None = None,
    model: str | None = None,
    n_threads: int | None = None,
    lock_timeout: float = 60.0,
    key_file: Path | None = None,
    hooks: Hooks = Hooks(),
    generator_factory=None,
) -> dict:
    """SPEC 3c for this store: deletion costs from the audit trail, query costs measured now.

    Measured and derived numbers come back rounded to 4 significant digits (the timings are not
    worth more); the parameters the caller gave are echoed exactly. `generator_factory` replaces
    the model (tests)."""
    from .cost import CostInputs, cost_inputs_from_audit, extra_query_cost, holistic_cost, measure_inference, round_sig
    from .llm import resolve_model

    # Before the store is opened or a model loaded: a bad parameter costs nothing to report.
    CostInputs(
        n_records=0,
        queries_per_deletion=queries_per_deletion,
        sisa_shards=sisa_shards,
        sisa_epochs=sisa_epochs,
        train_multiplier=train_multiplier,
        tokens_per_example=0.0 if tokens_per_example is None else tokens_per_example,
        per_token_inference_s=0.0 if per_token_s is None else per_token_s,
        finetuned_query_s=finetuned_query_s,
    ).validate()
    if n_questions < 1:
        raise InvalidParameter(f"--questions {n_questions} must be at least 1")
    if repeats < 1:
        raise InvalidParameter(f"--repeats {repeats} must be at least 1")
    if warmup < 0:
        raise InvalidParameter(f"--warmup {warmup} must be 0 or more")
    with open_store(root, write=False, lock_timeout=lock_timeout, on_message=hooks.say, key_file=key_file) as st:
        manifest = _fitted_manifest(st, root)
        entries = st.audit_entries()
        rows = np.sort(st.index()["row"][:n_questions])  # a hash-chosen sample of records
        questions = [
            {"input": d["input"], "choices": d.get("choices")} for d in map(orjson.loads, st.read_rows("data", rows))
        ]
        n_records = st.n_records
    if not questions:
        raise InvalidParameter(f"store {root} has no records to time queries on; ingest some first")
    measured = measure_inference(
        manifest.to_json(),
        None if generator_factory else resolve_model(model),
        questions,
        n_threads=n_threads,
        repeats=repeats,
        warmup=warmup,
        generator_factory=generator_factory,
    )
    extra, why = extra_query_cost(measured["extra_query_s"])
    base = CostInputs(
        n_records=n_records,
        queries_per_deletion=queries_per_deletion,
        sisa_shards=sisa_shards,
        sisa_epochs=sisa_epochs,
        train_multiplier=train_multiplier,
        per_token_inference_s=measured["per_token_inference_s"] if per_token_s is None else per_token_s,
        tokens_per_example=(measured["tokens_per_example"] if tokens_per_example is None else tokens_per_example),
        prefix_rebuild_s=measured["prefix_rebuild_s"],
        erase_query_s=measured["erase_query_s"],
        zero_shot_query_s=measured["zero_shot_query_s"],
        finetuned_query_s=finetuned_query_s,
        extra_query_s=extra,
    )
    result = holistic_cost(cost_inputs_from_audit(entries, base))
    interval = measured["extra_query_s"]
    result["extra_query"] = {
        "mean_s": interval["mean"],
        "low_s": interval["low"],
        "high_s": interval["high"],
        "n": interval["n"],
        "unit": interval["unit"],
        "confidence": 0.95,
        "spans_zero": interval["low"] is not None and interval["low"] <= 0.0 <= interval["high"],
        "counted_s": extra,
        "note": why,
    }
    result["measured"] = measured
    result["warnings"] = []
    if not result["inputs"]["forget_samples"]:
        result["warnings"].append(
            "the audit trail has no forget yet: erase's U counts only the "
            "prefix rebuild; run some forgets for a measured deletion cost"
        )
    given = {
        "queries_per_deletion": queries_per_deletion,
        "sisa_epochs": sisa_epochs,
        "train_multiplier": train_multiplier,
        "tokens_per_example": tokens_per_example,
        "per_token_inference_s": per_token_s,
        "finetuned_query_s": finetuned_query_s,
    }
    rounded = round_sig(result)
    rounded["queries_per_deletion"] = queries_per_deletion
    rounded["inputs"].update({k: v for k, v in given.items() if v is not None})
    return rounded
