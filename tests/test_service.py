"""The exactness contract through the real store: forget(fit(D), X) == fit(D \\ X), on disk.

Datasets use BYO vectors (`--vector-field`), so no model is needed; near-duplicates and exact
duplicates are included on purpose because they stress every tie-breaking rule.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from erase_cli import service
from erase_cli.errors import InvalidInput, StaleFit

FIT = dict(k=3, eps=0.2, dim=None, seed=7, max_iter=3)


def make_records(n: int, d: int = 6, seed: int = 0, start: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, d))
    out = []
    for i in range(start, start + n):
        v = centres[i % 4] + 0.3 * rng.normal(size=d)
        if i % 7 == 3:  # exact duplicate of the previous vector
            v = np.array(out[-1]["vec"]) if out else v
        out.append(
            {
                "id": f"rec-{i}",
                "input": f"unique-input-{i}-zq",
                "target": f"t{i % 4}",
                "choices": ["t0", "t1", "t2", "t3"],
                "vec": [float(a) for a in v],
            }
        )
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def ingest(store: Path, records: list[dict], tmp: Path, append: bool = False) -> dict:
    src = write_jsonl(
        tmp / f"in-{hashlib.sha1(str(len(records)).encode() + store.name.encode()).hexdigest()[:8]}.jsonl", records
    )
    return service.ingest(store, str(src), vector_field="vec", append=append)


def fresh_manifest(records: list[dict], tmp: Path, name: str) -> bytes:
    """The manifest of a brand-new store holding exactly `records` (in reversed order)."""
    store = tmp / name
    if records:
        ingest(store, list(reversed(records)), tmp)
    else:
        ingest(store, make_records(1), tmp)
        service.forget(store, ["rec-0"])
    service.fit(store, **FIT)
    return (store / "manifest.json").read_bytes()


def test_forget_equals_fit_on_survivors_byte_for_byte(tmp_path):
    records = make_records(40)
    store = tmp_path / "s"
    ingest(store, records, tmp_path)
    service.fit(store, **FIT)
    manifest = json.loads((store / "manifest.json").read_text())
    example = manifest["examples"][0]["id"]
    gone = {example, "rec-5", "rec-6"}
    report = service.forget(store, sorted(gone))
    assert [i["status"] for i in report["ids"]] == ["forgotten"] * 3
    assert service.verify(store)["identical"]
    survivors = [r for r in records if r["id"] not in gone]
    assert (store / "manifest.json").read_bytes() == fresh_manifest(survivors, tmp_path, "fresh")


def test_forgetting_everything_leaves_the_empty_fit(tmp_path):
    records = make_records(9)
    store = tmp_path / "s"
    ingest(store, records, tmp_path)
    service.fit(store, **FIT)
    service.forget(store, [r["id"] for r in records])
    assert service.verify(store)["identical"]
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["examples"] == [] and manifest["k_eff"] == 0 and manifest["n_records"] == 0
    assert service.status(store)["records"] == 0


def test_retry_is_idempotent_and_relearning_is_refused(tmp_path):
    records = make_records(12)
    store = tmp_path / "s"
    ingest(store, records, tmp_path)
    service.fit(store, **FIT)
    service.forget(store, ["rec-1"])
    again = service.forget(store, ["rec-1", "nope"])
    assert [i["status"] for i in again["ids"]] == ["already_forgotten", "not_found"]
    out = ingest(store, [records[1]], tmp_path, append=True)
    assert out["ingested"] == 0 and out["skipped_forgotten"] == ["rec-1"]
    src = write_jsonl(tmp_path / "relearn.jsonl", [records[1]])
    back = service.ingest(store, str(src), vector_field="vec", append=True, allow_relearn=True)
    assert back["ingested"] == 1 and back["stale_fit"]


def test_a_forget_asks_whether_the_store_exists_a_few_times_not_once_per_shard(tmp_path, monkeypatch):
    """Store.exists stats store.json on every call; the index rewrite of a batch touching many
    shards used to ask once per shard."""
    from erase_cli.store import Store

    store = tmp_path / "s"
    records = make_records(200)
    ingest(store, records, tmp_path)
    service.fit(store, **FIT)
    real = Store.exists.fget
    calls = []
    monkeypatch.setattr(Store, "exists", property(lambda self: calls.append(1) or real(self)))
    service.forget(store, [r["id"] for r in records[::4]])  # 50 ids: dozens of index shards
    assert 0 < len(calls) <= 12, len(calls)


def test_dry_run_changes_nothing(tmp_path):
    store = tmp_path / "s"
    ingest(store, make_records(20), tmp_path)
    service.fit(store, **FIT)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != "lock"}
    report = service.forget(store, ["rec-3", "rec-4"], dry_run=True)
    assert report["batch"]["dry_run"] and [i["status"] for i in report["ids"]] == ["would_forget"] * 2
    after = {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != "lock"}
    assert before == after


def test_stale_fit_after_append(tmp_path):
    store = tmp_path / "s"
    first, second = make_records(15), make_records(5, seed=1, start=100)
    ingest(store, first, tmp_path)
    service.fit(store, **FIT)
    ingest(store, second, tmp_path, append=True)
    assert service.status(store)["fit"]["stale"]
    with pytest.raises(StaleFit):
        service.verify(store)
    # forget still works: a covered record updates the fit, an appended one is only purged
    report = service.forget(store, ["rec-2", "rec-101"])
    assert [i["status"] for i in report["ids"]] == ["forgotten", "forgotten"]
    service.fit(store, **FIT)
    assert service.verify(store)["identical"]
    survivors = [r for r in first + second if r["id"] not in {"rec-2", "rec-101"}]
    assert (store / "manifest.json").read_bytes() == fresh_manifest(survivors, tmp_path, "fresh")


def test_second_ingest_without_append_is_refused_and_changes_nothing(tmp_path):
    store = tmp_path / "s"
    ingest(store, make_records(5), tmp_path)
    before = sorted((p, p.read_bytes()) for p in store.rglob("*") if p.is_file() and p.name != "lock")
    with pytest.raises(InvalidInput, match="--append"):
        ingest(store, make_records(3, start=50), tmp_path)
    assert before == sorted((p, p.read_bytes()) for p in store.rglob("*") if p.is_file() and p.name != "lock")


class StoreMachine(RuleBasedStateMachine):
    """Random interleavings of ingest --append, fit and forget; after every fit or forget the
    stored fit equals a fresh fit on the survivors (verify), and at the end a brand-new store of
    the survivors has a byte-identical manifest."""

    def __init__(self):
        super().__init__()
        import tempfile

        self.tmp = Path(tempfile.mkdtemp(prefix="erase-sm-"))
        self.store = self.tmp / "store"
        self.live: dict[str, dict] = {}
        self.next_id = 0
        self.fitted = False
        self.stale = False

    @initialize(n=st.integers(1, 25), seed=st.integers(0, 3))
    def first_ingest(self, n, seed):
        recs = make_records(n, seed=seed)
        ingest(self.store, recs, self.tmp)
        self.live = {r["id"]: r for r in recs}
        self.next_id = n

    @rule(n=st.integers(1, 6), seed=st.integers(0, 3))
    def append(self, n, seed):
        recs = make_records(n, seed=seed + 10, start=self.next_id)
        self.next_id += n
        ingest(self.store, recs, self.tmp, append=True)
        self.live.update({r["id"]: r for r in recs})
        self.stale = self.fitted

    @rule()
    def fit(self):
        service.fit(self.store, **FIT)
        self.fitted, self.stale = True, False
        assert service.verify(self.store)["identical"]

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def forget(self, data):
        ids = sorted(self.live)
        batch = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=min(6, len(ids)), unique=True))
        report = service.forget(self.store, batch)
        assert all(i["status"] == "forgotten" for i in report["ids"])
        for i in batch:
            del self.live[i]
        if self.fitted and not self.stale:
            assert service.verify(self.store)["identical"]

    @invariant()
    def counts_match(self):
        if self.store.exists():
            assert service.status(self.store)["records"] == len(self.live)

    def teardown(self):
        try:
            if self.fitted and not self.stale:
                got = (self.store / "manifest.json").read_bytes()
                assert got == fresh_manifest(list(self.live.values()), self.tmp, "fresh")
        finally:
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(
    max_examples=8, stateful_step_count=8, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_status_fit_lists_the_parameters_as_store_json_does(tmp_path):
    """status's `fit` object starts with the fit parameters in store.json's (sorted) order: the
    typed FitParams must not reorder the --json output."""
    store = tmp_path / "s"
    ingest(store, make_records(12), tmp_path)
    service.fit(store, **FIT)
    assert list(service.status(store)["fit"])[:7] == [
        "dim",
        "eps",
        "k",
        "max_iter",
        "route_size",
        "seed",
        "eps_effective",
    ]


# --------------------------------------------------------------------------- resident passes


def _pass(source, kind: str) -> dict[str, np.ndarray]:
    """One whole pass of a source, concatenated: rows, ids, idh, x and xf (blocks) or xf alone."""
    if kind == "vectors":
        return {"xf": np.concatenate(list(source.vectors()))}
    blocks = list(source.blocks())
    return {
        "rows": np.concatenate([b.rows for b in blocks]),
        "ids": np.concatenate([b.ids for b in blocks]),
        "idh": np.concatenate([b.idh for b in blocks]),
        "x": np.concatenate([b.x for b in blocks]).astype(np.int64),
        "xf": np.concatenate([b.xf for b in blocks]),
    }


@pytest.mark.parametrize("dim", [None, 3])
@pytest.mark.parametrize("first", ["vectors", "blocks"])
def test_resident_passes_give_what_streaming_gives(tmp_path, monkeypatch, dim, first):
    """The copy a source keeps in memory (int32 vectors, then ids) must serve the same records,
    paired the same way, as reading zarr on every pass; once filled, passes read no zarr."""
    from erase_cli import qkmeans as qk
    from erase_cli.store import Store, open_store

    monkeypatch.setattr(service, "SPAN_ROWS", 1024)  # several spans, some cut by the exclusions
    store = tmp_path / "s"
    ingest(store, make_records(2600), tmp_path)
    exclude = np.arange(5, 2600, 7)
    with open_store(store, write=False) as st:
        projector = qk.Projector(6, dim, 11)
        streamed = service.StoreSource(st, projector, st.n_slots, exclude=exclude, memory_bytes=0)
        resident = service.StoreSource(st, projector, st.n_slots, exclude=exclude, memory_bytes=2**30)
        want = {kind: _pass(streamed, kind) for kind in ("vectors", "blocks")}
        assert not streamed.resident
        second = "blocks" if first == "vectors" else "vectors"
        got = [(first, _pass(resident, first)), (second, _pass(resident, second))]
        assert resident.resident
        # From now on neither kind of pass may touch zarr.
        monkeypatch.setattr(Store, "iter_chunks", lambda *a, **k: pytest.fail("a resident pass read zarr"))
        got += [(kind, _pass(resident, kind)) for kind in ("vectors", "blocks", "vectors")]
    assert len(want["blocks"]["rows"]) == 2600 - len(exclude)
    np.testing.assert_array_equal(want["vectors"]["xf"], want["blocks"]["xf"])
    np.testing.assert_array_equal(want["blocks"]["x"], want["blocks"]["xf"].astype(np.int64))
    for kind, arrays in got:
        for name, values in want[kind].items():
            np.testing.assert_array_equal(arrays[name], values, err_msg=f"{kind} {name}")
            assert arrays[name].dtype == values.dtype or name == "x"


def test_values_beyond_int32_keep_streaming():
    fill = service._Filling(3, 2)
    assert fill.add(np.array([[1, -(2**31 - 1)]], dtype=np.int64))
    assert not fill.add(np.array([[2**31, 0]], dtype=np.int64))
    assert fill.done() is None  # incomplete: never served


def _fit_and_crossing_forget(store: Path, tmp: Path, records: list[dict]) -> dict[str, bytes]:
    ingest(store, records, tmp)
    service.fit(store, **FIT)
    fitted = {name: (store / name).read_bytes() for name in ("manifest.json", "fit/state.npz")}
    # A third of the records as one batch: it moves the centroids (a refit over the survivors).
    report = service.forget(store, [r["id"] for r in records[::3]])
    assert report["batch"]["action"] == "refit"
    forgot = {name: (store / name).read_bytes() for name in ("manifest.json", "fit/state.npz")}
    return {"fit": fitted, "forget": forgot}


def test_fit_and_refit_give_the_same_bytes_resident_or_streamed(tmp_path, monkeypatch):
    """The in-memory passes are a speed-up only: a fit and a crossing forget's refit write the
    same manifest and state bytes as when every pass streams from zarr."""
    records = make_records(300)
    resident = _fit_and_crossing_forget(tmp_path / "resident", tmp_path, records)
    monkeypatch.setattr(service, "FIT_MEMORY_BYTES", 0)
    monkeypatch.setattr(service, "REFIT_MEMORY_BYTES", 0)
    streamed = _fit_and_crossing_forget(tmp_path / "streamed", tmp_path, records)
    assert resident == streamed
    assert service.verify(tmp_path / "resident")["identical"]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_purge_patching_chunk_bytes_equals_rewriting_through_zarr(tmp_path, monkeypatch):
    """A forget empties the purged rows by patching each chunk with its codecs (emb and idh:
    zeroed bytes and a new crc32c; ids and data: vlen-utf8 strings in zstd); the store must end
    byte for byte as when zarr's array machinery rewrites them."""
    import shutil

    from erase_cli import store as store_mod

    records = make_records(2600, d=5)  # several chunks of every array; the last ones partial
    base = tmp_path / "base"
    ingest(base, records, tmp_path)
    service.fit(base, **FIT)
    gone = [r["id"] for r in records[3::97]] + ["rec-0", "rec-2599"]  # first and last slots too
    patched, rewritten = tmp_path / "patched", tmp_path / "rewritten"
    for path in (patched, rewritten):
        shutil.copytree(base, path)
    real = store_mod.Transaction._zero_rows
    used = []
    monkeypatch.setattr(store_mod.Transaction, "_zero_rows", lambda tx, *a: used.append(real(tx, *a)) or used[-1])
    service.forget(patched, gone)
    assert used == [True, True, True, True]  # every array patched
    monkeypatch.setattr(store_mod.Transaction, "_zero_rows", lambda tx, *a: False)
    service.forget(rewritten, gone)
    a, b = _files(patched), _files(rewritten)
    assert sorted(a) == sorted(b)
    differ = [rel for rel in a if a[rel] != b[rel] and rel not in ("audit.jsonl", "store.json")]
    assert differ == [] and any(rel.startswith("records.zarr/emb/c/") for rel in a)
    assert service.verify(patched)["identical"]


def test_a_fit_over_a_store_with_holes_is_the_same_resident_or_streamed(tmp_path, monkeypatch):
    """Forgotten records leave holes, so the spans a first pass streams hold fewer rows than the
    blocks a resident pass serves: the race must follow its records, not its blocks."""
    monkeypatch.setattr(service, "SPAN_ROWS", 1024)
    records = make_records(2600)
    written = {}
    for name, budget in (("resident", 2**30), ("streamed", 0)):
        monkeypatch.setattr(service, "FIT_MEMORY_BYTES", budget)
        store = tmp_path / name
        ingest(store, records, tmp_path)
        service.fit(store, **FIT)
        service.forget(store, [r["id"] for r in records[3:2600:97]])
        service.fit(store, **FIT)
        written[name] = {n: (store / n).read_bytes() for n in ("manifest.json", "fit/state.npz")}
    assert written["resident"] == written["streamed"]
