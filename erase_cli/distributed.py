"""Dask for ingest and fit (`--scheduler ADDRESS`, ERASE_DASK_SCHEDULER; `local:N` starts a
LocalCluster of N worker processes on this machine). dask.distributed is imported only here and
only when a scheduler is asked for: the optional extra `erase-cli[dask]`.

Fit: every pass of qkmeans (race rounds, Lloyd iterations, the final pass) runs its part kernel
on the workers, one task per part of the store's rows, each reading the store's zarr arrays; the
client combines the parts' results with qkmeans' own combine steps, so the state is the local
fit's, bit for bit (qkmeans "Passes over parts"). Workers need the store at the same path: a
shared filesystem. They read it without the lock, which the client holds for the whole fit.

Ingest: workers embed parts of the input texts; the client validates and commits as a local
ingest does (service.ingest).

Workers must not spill to disk: a spilled text or vector would be a copy of a record that a later
forget cannot reach. Every worker is checked before any work is sent, and a worker whose memory
manager would spill is refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import qkmeans as qk
from .errors import EraseError, InvalidInput, InvalidParameter, SchedulerUnavailable

LOCAL_PREFIX = "local:"
MAX_LOCAL_WORKERS = 256
CONNECT_TIMEOUT_S = 20
WORKER_WAIT_S = 60
# Parts per worker: a few, so that a slow worker does not hold a pass back for long; parts are
# whole store chunks, so two tasks never decode the same chunk.
PARTS_PER_WORKER = 4
# Texts per ingest task: at least 16 batches, as embed.py hands sentence-transformers in one call,
# which sorts a call's texts by length so that its batches pad little (a smaller call pads more).
MIN_BATCHES_PER_TASK = 16
MAX_TEXTS_PER_TASK = 8192

Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- the cluster


def check_address(address: str) -> str:
    """A scheduler address as given: `local:N` or a Dask address (tcp://HOST:PORT, HOST:PORT)."""
    address = address.strip()
    if address.startswith(LOCAL_PREFIX):
        raw = address[len(LOCAL_PREFIX) :]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LOCAL_WORKERS:
            raise InvalidParameter(
                f"scheduler {address!r}: local:N needs a worker count N from 1 to {MAX_LOCAL_WORKERS}, e.g. local:2"
            )
    elif not address:
        raise InvalidParameter("the scheduler address is empty; pass e.g. tcp://HOST:8786 or local:2")
    return address


def _spill_state(dask_worker) -> tuple[str, Any, Any]:
    """What a worker does with data over its memory target (run on each worker)."""
    mm = dask_worker.memory_manager
    return type(dask_worker.data).__name__, mm.memory_target_fraction, mm.memory_spill_fraction


@dataclass
class Cluster:
    """A connected Dask client and the scheduler address it was asked for."""

    client: Any
    address: str
    workers: list[str]  # the workers checked not to spill: erase's tasks run on these only
    local: bool

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    def tasks_by_worker(self, stream: Sequence[dict]) -> dict[str, int]:
        """Tasks of erase's kernels in a task stream, counted by the worker that ran them."""
        counts: dict[str, int] = {}
        for task in stream:
            key = str(task.get("key", ""))
            if any(key.startswith(name) for name in _KERNELS):
                counts[task["worker"]] = counts.get(task["worker"], 0) + 1
        return dict(sorted(counts.items()))


@contextlib.contextmanager
def connect(address: str) -> Iterator[Cluster]:
    """A client of the scheduler at `address`, or of a LocalCluster started for `local:N` (and
    stopped on the way out), whose workers were all checked not to spill to disk."""
    address = check_address(address)
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise SchedulerUnavailable(
            "--scheduler needs Dask, which is not installed; run pip install 'erase-cli[dask]'"
        ) from None
    no_spill = {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}
    with contextlib.ExitStack() as stack:
        if address.startswith(LOCAL_PREFIX):
            n = int(address[len(LOCAL_PREFIX) :])
            stack.enter_context(dask.config.set(no_spill))
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    # No dashboard; the scheduler's small HTTP server (health, metrics) on a free
                    # loopback port, not on every interface at 8787.
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    # A worker's heartbeat racing the scheduler's shutdown logs an ERROR with a
                    # traceback; erase reports a failed task as its own one-line error instead.
                    silence_logs=logging.CRITICAL,
                )
            )
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(address, timeout=CONNECT_TIMEOUT_S))
            except (OSError, TimeoutError, ValueError) as exc:
                raise SchedulerUnavailable(
                    f"cannot reach the Dask scheduler at {address} ({type(exc).__name__}); start one with "
                    "'dask scheduler' and its workers with 'dask worker ADDRESS', or use --scheduler local:N"
                ) from None
            try:
                client.wait_for_workers(1, timeout=WORKER_WAIT_S)
            except TimeoutError:
                raise SchedulerUnavailable(
                    f"the Dask scheduler at {address} has no workers after {WORKER_WAIT_S} s; start some with "
                    f"'dask worker {address}'"
                ) from None
        states = client.run(_spill_state)
        spilling = {w: s for w, s in states.items() if s[0] != "dict"}
        if spilling:
            worker = sorted(spilling)[0]
            raise SchedulerUnavailable(
                f"Dask worker {worker} may spill data to disk, where a forgotten record would outlive its "
                "forget; start the workers with DASK_DISTRIBUTED__WORKER__MEMORY__TARGET=False and "
                "DASK_DISTRIBUTED__WORKER__MEMORY__SPILL=False"
            )
        yield Cluster(client, address, sorted(states), address.startswith(LOCAL_PREFIX))


@contextlib.contextmanager
def cluster_failures(what: str) -> Iterator[None]:
    """The cluster's own failures (a worker killed, the connection lost, a task cancelled) as
    one-line errors; errors raised by erase's code on a worker pass through as they are."""
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    try:
        yield
    except EraseError:
        raise
    except (OSError, TimeoutError, KilledWorker, FutureCancelledError) as exc:
        raise SchedulerUnavailable(
            f"the Dask cluster failed during {what} ({type(exc).__name__}: {exc}); nothing was written, "
            "run the command again"
        ) from None


@contextlib.contextmanager
def task_stream(cluster: Cluster) -> Iterator[list[dict]]:
    """Records the tasks run meanwhile (filled in on the way out): who ran what, for the report."""
    from distributed import get_task_stream

    out: list[dict] = []
    with get_task_stream(client=cluster.client) as ts:
        yield out
    out.extend(ts.data)


# --------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class Part:
    """Rows of the store a task reads: sorted live rows within whole chunks."""

    root: str
    meta: Any  # the StoreMeta the client checked
    rows: np.ndarray
    d_in: int
    dim: int | None
    seed: int


def _read_blocks(part: Part) -> Iterator[qk.Block]:
    from .store import STORE_JSON, Store

    root = Path(part.root)
    if not (root / STORE_JSON).is_file():
        import socket

        raise SchedulerUnavailable(
            f"a Dask worker on {socket.gethostname()} cannot see the store at {root}; workers read the store "
            "directly, so it must be on a filesystem they share, mounted at the same path"
        )
    view = Store.worker_view(root, part.meta)
    projector = qk.Projector(part.d_in, part.dim, part.seed)
    for rows, vals in view.iter_chunks(part.rows, ("ids", "idh", "emb")):
        yield qk.Block(
            rows=rows, ids=vals["ids"], idh=vals["idh"].astype(np.uint64), x=projector(qk.to_fixed(vals["emb"]))
        )


def _blocks(part: Part | list[qk.Block]) -> Iterable[qk.Block]:
    return _read_blocks(part) if isinstance(part, Part) else part


def _load_part(part: Part) -> list[qk.Block]:
    return list(_read_blocks(part))


def _race_task(part, memo, pending, r, mix):
    return qk.race_part(_blocks(part), memo, pending, r, mix)


def _lloyd_task(part, C):
    return qk.lloyd_part(qk.block_vectors(_blocks(part)), C)


def _final_task(part, C, M, only):
    return qk.final_part(_blocks(part), C, M, only)


_KERNELS = ("_load_part", "_race_task", "_lloyd_task", "_final_task", "_embed_task")


def split_rows(rows: np.ndarray, chunk_rows: int, n_parts: int) -> list[np.ndarray]:
    """Sorted rows cut into at most n_parts runs of whole chunks, none empty."""
    if len(rows) == 0:
        return []
    chunk = rows // chunk_rows
    first, last = int(chunk[0]), int(chunk[-1])
    per = max(1, math.ceil((last - first + 1) / max(1, n_parts)))
    edges = np.searchsorted(chunk, np.arange(first, last + 1, per))
    return [p for p in np.split(rows, edges[1:]) if len(p)]


class DaskRunner:
    """A qkmeans.Runner whose parts are tasks on a Dask cluster. Parts that fit the in-memory
    budget (the local fit's) are read once and kept in the workers' memory between passes;
    larger ones are read from the store on every pass, as the local fit streams them."""

    def __init__(
        self,
        cluster: Cluster,
        root: Path,
        meta,
        rows: np.ndarray,
        projector: qk.Projector,
        in_memory: bool,
        chunk_rows: int,
    ):
        self.client = cluster.client
        self.workers = cluster.workers  # a worker that joins later was never checked for spilling
        self.n = len(rows)
        specs = [
            Part(str(Path(root).resolve()), meta, r, projector.d_in, projector.dim, projector.seed)
            for r in split_rows(rows, chunk_rows, PARTS_PER_WORKER * max(1, cluster.n_workers))
        ]
        self._parts = self.client.scatter(specs, workers=self.workers)
        if in_memory:
            self._parts = self.client.map(_load_part, self._parts, pure=False, workers=self.workers)
        self._memos: list[Any] = [None] * len(self._parts)

    def _gather(self, futures: list) -> list:
        with cluster_failures("the fit"):
            return self.client.gather(futures)

    def race(self, r: int, mix, pending: np.ndarray, start: bool) -> list[qk.RacePartial]:
        if start:
            self._memos = [None] * len(self._parts)
        both = [
            self.client.submit(_race_task, part, memo, pending, r, mix, pure=False, workers=self.workers)
            for part, memo in zip(self._parts, self._memos)
        ]
        partials = [self.client.submit(operator.itemgetter(0), f, pure=False, workers=self.workers) for f in both]
        self._memos = [self.client.submit(operator.itemgetter(1), f, pure=False, workers=self.workers) for f in both]
        return self._gather(partials)

    def lloyd(self, C: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._gather(
            [self.client.submit(_lloyd_task, p, C, pure=False, workers=self.workers) for p in self._parts]
        )

    def final(self, C: np.ndarray, M: int, only: set[int] | None = None) -> list[tuple[np.ndarray, qk.Ranked]]:
        return self._gather(
            [self.client.submit(_final_task, p, C, M, only, pure=False, workers=self.workers) for p in self._parts]
        )


class LazyRunner:
    """A Runner that connects on its first pass: a forget's refit may never need one."""

    def __init__(self, n: int, open_runner: Callable[[], qk.Runner]):
        self.n = n
        self._open = open_runner
        self._runner: qk.Runner | None = None

    def _get(self) -> qk.Runner:
        if self._runner is None:
            self._runner = self._open()
        return self._runner

    def race(self, r: int, mix, pending: np.ndarray, start: bool) -> list[qk.RacePartial]:
        return self._get().race(r, mix, pending, start)

    def lloyd(self, C: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._get().lloyd(C)

    def final(self, C: np.ndarray, M: int, only: set[int] | None = None) -> list[tuple[np.ndarray, qk.Ranked]]:
        return self._get().final(C, M, only)


# --------------------------------------------------------------------------- ingest

_EMBEDDERS: dict[tuple[str | None, str | None], Any] = {}  # per worker process: models loaded once


def _embedder(name: str | None, device: str | None, threads: int | None):
    key = (name, device)
    if key not in _EMBEDDERS:
        from .embed import load_embedder

        _EMBEDDERS[key] = load_embedder(name, device)
    if threads:
        import torch

        # Per task: the thread count is per OpenMP thread, and a worker may run a task on a new
        # executor thread, which starts from the OMP_NUM_THREADS=1 Dask sets for its workers.
        torch.set_num_threads(threads)
    return _EMBEDDERS[key]


def _embedder_info(name: str | None, device: str | None, threads: int | None) -> tuple[int, str]:
    model = _embedder(name, device, threads)
    return model.dim, model.name


def _embed_task(texts: list[str], name: str | None, device: str | None, threads: int | None, batch_size: int):
    model = _embedder(name, device, threads)
    parts = list(model.embed(texts, batch_size))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, model.dim), dtype=np.float32)


def embed_texts(
    cluster: Cluster,
    texts: list[str],
    name: str | None,
    device: str | None,
    batch_size: int,
    check: Callable[[int, str], None],
    progress: Progress | None = None,
) -> tuple[np.ndarray, str]:
    """The texts' vectors, embedded on the workers in parts, in the texts' order, and the
    embedder's name; `check(dim, name)` runs before any text is sent."""
    client = cluster.client
    # On this machine's own workers, share the cores out instead of every torch taking them all.
    threads = max(1, (os.cpu_count() or 1) // max(1, cluster.n_workers)) if cluster.local else None
    with cluster_failures("the embedding"):
        dim, model_name = client.submit(
            _embedder_info, name, device, threads, pure=False, workers=cluster.workers
        ).result()
    check(dim, model_name)
    per = min(
        MAX_TEXTS_PER_TASK,
        max(batch_size * MIN_BATCHES_PER_TASK, math.ceil(len(texts) / (PARTS_PER_WORKER * cluster.n_workers))),
    )
    starts = list(range(0, len(texts), per))
    futures = [
        client.submit(
            _embed_task, texts[s : s + per], name, device, threads, batch_size, pure=False, workers=cluster.workers
        )
        for s in starts
    ]
    index = {f.key: i for i, f in enumerate(futures)}
    out: list[np.ndarray | None] = [None] * len(futures)
    done = 0
    from distributed import as_completed

    for future in as_completed(futures):
        i = index[future.key]
        with cluster_failures("the embedding"):
            vectors = future.result()
        want = min(per, len(texts) - starts[i])
        if not isinstance(vectors, np.ndarray) or vectors.shape != (want, dim):
            raise InvalidInput(
                f"a Dask worker returned vectors of shape {getattr(vectors, 'shape', None)}, not {(want, dim)}"
            )
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
        if not np.isfinite(norms).all() or (np.abs(norms - 1) > 1e-3).any():
            raise InvalidInput("a Dask worker returned vectors that are not unit length; check the workers' erase")
        out[i] = vectors
        done += want
        if progress:
            progress("embedding", done, len(texts))
    return np.concatenate([v for v in out if v is not None]).astype(np.float32), model_name
