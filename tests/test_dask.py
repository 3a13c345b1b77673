"""Dask for fit and ingest: a fit on a 2-worker cluster of separate processes writes the local
fit's manifest.json and fit/state.npz byte for byte, and both workers ran tasks; a forget's refit
on a cluster equals the local one; forget never reads ERASE_DASK_SCHEDULER; workers that could
spill to disk are refused; ingest embeds on the workers and stores the local ingest's vectors.
The race's combine step is tested on constructed near-ties in test_parts.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from helpers import VECTOR_FIELD, clean_env, erase, make_records, refused, snapshot, write_jsonl  # noqa: E402

from erase_cli import distributed, service  # noqa: E402
from erase_cli.errors import SchedulerUnavailable  # noqa: E402
from erase_cli.store import CHUNK_ROWS, open_store  # noqa: E402

FIT = ["-k", "6", "--dim", "4", "--eps", "0.05", "--max-iter", "4", "--route-size", "3"]
FITTED = ("manifest.json", "fit/state.npz")


def _cluster(spill: bool):
    import dask
    from distributed import LocalCluster

    settings = {} if spill else {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}
    with dask.config.set(settings):
        return LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes that do not spill, started by the test (an address, as a user's is)."""
    c = _cluster(spill=False)
    yield c.scheduler_address
    c.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A store of random records, ingested once; tests take copies (_ingested)."""
    tmp = tmp_path_factory.mktemp("dask")
    # More than two store chunks (1,024 rows each), so that the records fall into several parts.
    path = write_jsonl(tmp / "data.jsonl", make_records(2600, dim=12, seed=5))
    r = erase("ingest", str(path), "--vector-field", VECTOR_FIELD, "--store", str(tmp / "store"))
    assert r.returncode == 0, r.stderr
    return tmp / "store"


def _ingested(path: Path, data: Path) -> Path:
    return Path(shutil.copytree(data, path))


def _fit(store: Path, *extra: str, env: dict | None = None) -> dict:
    r = erase("fit", *FIT, *extra, "--store", str(store), "--json", env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _same_fit(a: Path, b: Path) -> None:
    for rel in FITTED:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_fit_on_a_local_cluster_is_byte_identical_and_uses_both_workers(tmp_path, data):
    local = _ingested(tmp_path / "local", data)
    dask = _ingested(tmp_path / "dask", data)
    plain = _fit(local)
    report = _fit(dask, "--scheduler", "local:2")
    assert "dask" not in plain
    assert report["dask"]["scheduler"] == "local:2" and report["dask"]["workers"] == 2
    tasks = report["dask"]["tasks_by_worker"]
    assert len(tasks) == 2 and all(n > 0 for n in tasks.values()), tasks
    _same_fit(local, dask)
    assert report["state_digest"] == plain["state_digest"]


def test_fit_through_the_variable_on_a_running_cluster_streaming_from_the_store(tmp_path, data, cluster, monkeypatch):
    local = _ingested(tmp_path / "local", data)
    _fit(local)
    # The variable names the scheduler; the parts are read from zarr on every pass (no room to
    # keep them in memory), which is what a fit of a big store does.
    dask = _ingested(tmp_path / "dask", data)
    monkeypatch.setattr(service, "FIT_MEMORY_BYTES", 0)
    monkeypatch.setenv("ERASE_DASK_SCHEDULER", cluster)
    from erase_cli import config

    report = service.fit(dask, scheduler=config.scheduler(None), k=6, dim=4, eps=0.05, max_iter=4, route_size=3)
    assert report.dask is not None and len(report.dask["tasks_by_worker"]) == 2
    _same_fit(local, dask)


def _executed(address: str) -> dict[str, int]:
    """Tasks each worker of the cluster at `address` has run so far."""
    from distributed import Client

    with Client(address) as client:
        return client.run(lambda dask_worker: dask_worker.state.executed_count)


def test_forget_refit_on_a_cluster_equals_the_local_one_and_ignores_the_variable(tmp_path, data, cluster):
    base = _ingested(tmp_path / "base", data)
    _fit(base)
    with open_store(base, write=False) as st:
        batch = [e["id"] for e in st.manifest().examples]  # forgetting every example crosses
    a, b = shutil.copytree(base, tmp_path / "a"), shutil.copytree(base, tmp_path / "b")
    # ERASE_DASK_SCHEDULER names a live cluster: a forget without --scheduler must not use it.
    before = _executed(cluster)
    r = erase("forget", *batch, "--store", str(a), "--json", env=clean_env(ERASE_DASK_SCHEDULER=cluster))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["batch"]["action"] == "refit"
    assert _executed(cluster) == before
    r = erase("forget", *batch, "--scheduler", cluster, "--store", str(b), "--json", timeout=180)
    assert r.returncode == 0, r.stderr
    after = _executed(cluster)
    assert after.keys() == before.keys() and len(after) == 2
    assert all(after[w] > before[w] for w in after), (before, after)  # both workers ran the refit's passes
    _same_fit(a, b)
    assert erase("verify", "--store", str(b)).returncode == 0


def test_workers_that_may_spill_are_refused_and_the_store_is_unchanged(tmp_path, data):
    store = _ingested(tmp_path / "s", data)
    _fit(store)
    spilling = _cluster(spill=True)
    try:
        before = snapshot(store)
        with pytest.raises(SchedulerUnavailable, match="spill"):
            service.fit(store, scheduler=spilling.scheduler_address)
        assert snapshot(store) == before
    finally:
        spilling.close()


def test_bad_or_unreachable_schedulers_are_one_line_errors(tmp_path, data, monkeypatch):
    store = _ingested(tmp_path / "s", data)
    args = ["fit", "--scheduler", "local:0", "--store", str(store)]
    refused(args, store, kind="invalid_parameter", mentions=["local:2"])
    env = clean_env(ERASE_DASK_SCHEDULER="local:many")
    refused(["fit", "--store", str(store)], store, kind="invalid_parameter", mentions=["local:N"], env=env)
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_S", 1)  # Dask retries a refused connection until then
    before = snapshot(store)
    with pytest.raises(SchedulerUnavailable, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        service.fit(store, scheduler="tcp://127.0.0.1:9")
    assert snapshot(store) == before


def test_ingest_embeds_on_the_workers_and_stores_the_local_vectors(tmp_path, cluster):
    recs = make_records(700, dim=4, seed=9)
    path = write_jsonl(tmp_path / "t.jsonl", recs)
    stores = {}
    for name, extra in (("local", []), ("dask", ["--scheduler", cluster])):
        stores[name] = tmp_path / name
        # Small batches, so that the 700 texts make several tasks (a task holds 16 batches at least).
        args = ["--embedder", "fake:24", "--batch-size", "8", *extra, "--store", str(stores[name]), "--json"]
        r = erase("ingest", str(path), *args)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["ingested"] == 700
    tasks = report["dask"]["tasks_by_worker"]
    assert len(tasks) == 2 and all(n > 0 for n in tasks.values()), tasks
    vectors = {}
    for name, store in stores.items():
        with open_store(store, write=False) as st:
            vectors[name] = (st.meta.embedder, st.read_rows("ids", st.live_rows()), st.read_rows("emb", st.live_rows()))
    assert vectors["local"][0] == vectors["dask"][0] == "fake:24"
    assert np.array_equal(vectors["local"][1], vectors["dask"][1])
    assert np.array_equal(vectors["local"][2], vectors["dask"][2])


def test_split_rows_keeps_whole_chunks_and_every_row():
    rows = np.array([0, 5, 1023, 1024, 3000, 5000, 5001, 9000], dtype=np.int64)
    parts = distributed.split_rows(rows, CHUNK_ROWS, 3)
    assert np.array_equal(np.concatenate(parts), rows)
    chunks = [set((p // CHUNK_ROWS).tolist()) for p in parts]
    assert all(a.isdisjoint(b) for i, a in enumerate(chunks) for b in chunks[i + 1 :])
    assert 1 < len(parts) <= 3
    assert distributed.split_rows(rows[:0], CHUNK_ROWS, 4) == []
    assert len(distributed.split_rows(rows, CHUNK_ROWS, 100)) == len({int(r) // CHUNK_ROWS for r in rows})


def test_a_worker_that_cannot_see_the_store_says_it_needs_a_shared_filesystem(tmp_path, data):
    with open_store(data, write=False) as st:
        meta = st.meta
    part = distributed.Part(str(tmp_path / "elsewhere"), meta, np.arange(3, dtype=np.int64), 12, 4, 0)
    with pytest.raises(SchedulerUnavailable, match="filesystem they share"):
        list(distributed._read_blocks(part))
    blocks = distributed._load_part(distributed.Part(str(data), meta, np.arange(3, dtype=np.int64), 12, 4, 0))
    assert sum(len(b.ids) for b in blocks) == 3 and blocks[0].x.shape[1] == 4
