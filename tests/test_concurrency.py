"""Concurrency on one store (issue 4, SPEC 3): two cron jobs forgetting overlapping batches at once,
a writer that cannot get the lock in time (exit 75, says it waited), and readers sharing the lock.
All through the real `erase` console script."""

from __future__ import annotations

import json
import time

import pytest
from helpers import (
    audit_lines,
    build_store,
    clean_env,
    erase,
    erase_popen,
    find_bytes,
    make_records,
    record_needles,
    snapshot,
)

from erase_cli import audit, service
from erase_cli.lock import StoreLock


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conc")
    records = make_records(200, seed=3)
    store = tmp / "store"
    fit = build_store(store, records, tmp)
    return store, records, fit, tmp


def test_two_overlapping_forget_batches_at_once(fitted):
    store, records, fit, tmp = fitted
    examples = [e["id"] for e in fit["examples"]]
    by_id = {r.id: r for r in records}
    pool = examples[:2] + [r.id for r in records if r.id not in examples][:10]
    a_ids, b_ids = pool[:8], pool[4:]  # four ids in both batches
    a_file, b_file = tmp / "a.txt", tmp / "b.txt"
    a_file.write_text("\n".join(a_ids) + "\n")
    b_file.write_text("\n".join(b_ids) + "\n")

    procs = [erase_popen("forget", "--from-file", str(f), "--store", str(store), "--json") for f in (a_file, b_file)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    reports = [json.loads(out) for out, _ in outs]

    # Each id was forgotten by exactly one of the two; the other saw it already forgotten.
    status_of = {}
    for rep in reports:
        for item in rep["ids"]:
            assert item["status"] in ("forgotten", "already_forgotten")
            status_of.setdefault(item["id"], []).append(item["status"])
    assert set(status_of) == set(pool)
    for rid, seen in status_of.items():
        assert seen.count("forgotten") == 1, (rid, seen)

    secret = (store / "secret").read_bytes()
    logged = [h for e in audit_lines(store) if e["action"] == "forget" for h in e["id_hashes"]]
    assert sorted(logged) == sorted(audit.id_hash(secret, rid) for rid in pool)
    assert service.log(store, check=True)["valid"] is True
    v = erase("verify", "--store", str(store), "--json")
    assert v.returncode == 0 and json.loads(v.stdout)["identical"] is True, v.stdout + v.stderr
    assert find_bytes(store, record_needles([by_id[i] for i in pool])) == {}


def test_writer_waits_then_exits_75(fitted):
    store, records, _, _ = fitted
    rid = records[-1].id
    before = snapshot(store)
    with StoreLock(store / "lock", shared=False, timeout=5):
        t0 = time.monotonic()
        r = erase("forget", rid, "--store", str(store), "--lock-timeout", "1", "--json")
        waited = time.monotonic() - t0
        assert r.returncode == 75, r.stderr
        assert waited >= 1.0
        assert "waiting for the lock" in r.stderr
        assert json.loads(r.stdout)["error"]["kind"] == "store_locked"
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "locked" in lines[0] and "lock-timeout" in lines[0]
        assert "Traceback" not in r.stderr

        # The environment variable sets the same limit; a flag beats it.
        r = erase("forget", rid, "--store", str(store), env=clean_env(ERASE_LOCK_TIMEOUT="0.5"))
        assert r.returncode == 75, r.stderr
        assert "waited 0.5 s" in r.stderr
        r = erase("forget", rid, "--store", str(store), "--lock-timeout", "0.2", env=clean_env(ERASE_LOCK_TIMEOUT="30"))
        assert r.returncode == 75 and "waited 0.2 s" in r.stderr
    assert snapshot(store) == before
    # Once the lock is free the same command goes through.
    r = erase("forget", rid, "--store", str(store), "--lock-timeout", "1")
    assert r.returncode == 0, r.stderr


def test_readers_share_the_lock_and_a_writer_blocks_them(fitted):
    store, _, _, _ = fitted
    before = snapshot(store)
    with StoreLock(store / "lock", shared=True, timeout=5):
        # Readers proceed while another reader holds the lock ...
        procs = [erase_popen("status", "--store", str(store), "--json") for _ in range(2)]
        t0 = time.monotonic()
        outs = [p.communicate(timeout=30) for p in procs]
        assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
        assert time.monotonic() - t0 < 20
        assert "waiting" not in "".join(e for _, e in outs)
        # ... but a writer does not.
        r = erase("fit", "--store", str(store), "--dim", "8", "-k", "4", "--lock-timeout", "0.3")
        assert r.returncode == 75, r.stderr
    with StoreLock(store / "lock", shared=False, timeout=5):
        p = erase_popen("status", "--store", str(store))
        time.sleep(1.5)
        assert p.poll() is None  # a reader waits for a writer
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "waiting for the lock" in err
    assert snapshot(store) == before
