"""`erase export`: the survivors as JSONL, enough to reproduce a fit elsewhere bit for bit, written
as an owner-only file that is never put over an existing one, and recorded in the audit trail
(counts only, never ids or text); however it ends, no spooled `.partial` file is left, and a
reader that closes the pipe early ends it quietly."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess

import pytest
from helpers import (
    ERASE,
    VECTOR_FIELD,
    audit_lines,
    build_store,
    clean_env,
    erase,
    make_records,
    record_needles,
    refused,
    snapshot,
    write_jsonl,
)

from erase_cli import service
from erase_cli.errors import DiskFull, InvalidParameter, StoreLocked

FIT = ["-k", "4", "--dim", "8", "--eps", "0.1", "--max-iter", "3"]  # build_store's parameters


@pytest.fixture
def world(tmp_path):
    """A fitted store of 40 records, 6 of them forgotten."""
    store = tmp_path / "store"
    records = make_records(40, dim=8)
    build_store(store, records, tmp_path)
    gone = records[3:9]
    r = erase("forget", *(g.id for g in gone), "--store", str(store))
    assert r.returncode == 0, r.stderr
    return store, records, gone


def ok(*args: str) -> str:
    r = erase(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_reingested_elsewhere_fits_to_the_same_state(world, tmp_path):
    store, records, gone = world
    out = tmp_path / "export.jsonl"
    ok("export", "--vectors", "--output", str(out), "--store", str(store))
    status = json.loads(ok("status", "--store", str(store), "--json"))["fit"]

    copy = tmp_path / "copy"
    ok("ingest", str(out), "--vector-field", "vector", "--store", str(copy))
    refit = json.loads(ok("fit", *FIT, "--store", str(copy), "--json"))
    assert refit["n_records"] == len(records) - len(gone)
    assert refit["state_digest"] == status["state_digest"]
    assert refit["prompt_digest"] == status["prompt_digest"]

    # The copy stores every embedding bit for bit as the original did: exported again, the
    # vectors are the same float64 text (a re-normalisation would move last bits).
    again = tmp_path / "again.jsonl"
    ok("export", "--vectors", "--output", str(again), "--store", str(copy))
    assert [r["vector"] for r in read_jsonl(again)] == [r["vector"] for r in read_jsonl(out)]


def test_export_holds_the_survivors_and_nothing_forgotten(world, tmp_path):
    store, records, gone = world
    out = tmp_path / "export.jsonl"
    ok("export", "--output", str(out), "--store", str(store))
    rows = read_jsonl(out)
    alive = [r for r in records if r not in gone]
    assert [r["id"] for r in rows] == [r.id for r in alive]  # in ingest order
    assert rows[0] == {"id": alive[0].id, "input": alive[0].input, "target": alive[0].target}
    data = out.read_bytes()
    for name, needle in record_needles(gone).items():
        if not name.endswith(":embedding"):
            assert needle not in data, name


def test_choices_and_list_targets_round_trip(tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_text(
        json.dumps({"id": 7, "input": "q", "target": ["b", "a"], "choices": ["a", "b"], VECTOR_FIELD: [1.0, 2.0]})
        + "\n"
        + json.dumps({"id": "x", "input": "r", "target": "t", VECTOR_FIELD: [2.0, 1.0]})
        + "\n"
    )
    store = tmp_path / "store"
    ok("ingest", str(src), "--vector-field", VECTOR_FIELD, "--store", str(store))
    out = tmp_path / "export.jsonl"
    ok("export", "--output", str(out), "--store", str(store))
    assert read_jsonl(out) == [
        {"id": "7", "input": "q", "target": ["b", "a"], "choices": ["a", "b"]},
        {"id": "x", "input": "r", "target": "t"},
    ]


def test_export_file_is_owner_only_even_under_a_loose_umask(world, tmp_path):
    store, _, _ = world
    out = tmp_path / "export.jsonl"
    os.umask(0)  # inherited by the child (conftest restores the test's own)
    r = erase("export", "--output", str(out), "--store", str(store), env=clean_env())
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert "never purge" in r.stderr  # the warning that this is a copy outside erase's reach
    # --force replaces it, still owner-only, and no staging file is left beside it.
    os.chmod(out, 0o644)
    ok("export", "--force", "--output", str(out), "--store", str(store))
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_existing_file_is_never_overwritten_without_force(world, tmp_path):
    store, _, _ = world
    out = tmp_path / "precious.jsonl"
    out.write_text("keep me\n")
    msg = refused(
        ["export", "--output", str(out), "--store", str(store)],
        store,
        kind=InvalidParameter.kind,
        mentions=["already exists", "--force"],
    )
    assert str(out) in msg
    assert out.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_inside_the_store_is_refused(world):
    store, _, _ = world
    refused(
        ["export", "--output", str(store / "fit" / "copy.jsonl"), "--store", str(store)],
        store,
        kind=InvalidParameter.kind,
        mentions=["inside store"],
    )


def test_export_is_an_audit_entry_with_counts_only(world, tmp_path):
    store, records, gone = world
    out = tmp_path / "export.jsonl"
    report = json.loads(ok("export", "--vectors", "--output", str(out), "--store", str(store), "--json"))
    assert report["records"] == len(records) - len(gone) and report["vectors"] is True
    assert report["warnings"] == []
    entry = audit_lines(store)[-1]
    assert entry["action"] == "export" and entry["hash"] == report["audit_hash"]
    assert entry["n_records"] == len(records) - len(gone) and entry["vectors"] is True
    assert entry["to"] == "file"
    log = (store / "audit.jsonl").read_text()
    assert str(out) not in log and not any(r.id in log or r.input in log for r in records)
    head = json.loads(ok("log", "--head", "--store", str(store), "--json"))["head"]
    assert head == entry["hash"]
    verdict = json.loads(ok("log", "--verify", "--store", str(store), "--json").splitlines()[-1])
    assert verdict["verify"]["valid"] is True


def test_export_changes_no_data_file(world, tmp_path):
    store, _, _ = world
    before = snapshot(store)
    ok("export", "--output", str(tmp_path / "e.jsonl"), "--store", str(store))
    after = snapshot(store)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert changed == ["audit.jsonl", "store.json"]


def test_export_to_stdout_is_explicit(world, tmp_path):
    store, _, _ = world
    out = tmp_path / "file.jsonl"
    ok("export", "--output", str(out), "--store", str(store))
    r = erase("export", "--output", "-", "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert r.stdout == out.read_text()  # only records on stdout, the report on stderr
    assert "exported" in r.stderr
    assert audit_lines(store)[-1]["to"] == "stdout"
    # Without --output nothing is written anywhere: the destination must be chosen.
    r = erase("export", "--store", str(store))
    assert r.returncode == 2 and "--output" in r.stderr and r.stdout == ""
    refused(
        ["export", "--output", "-", "--store", str(store)],
        store,
        kind=InvalidParameter.kind,
        mentions=["--json", "stdout"],
    )


def test_a_forget_during_the_read_makes_the_export_read_again(world, tmp_path, monkeypatch):
    """Records forgotten between the read and the audit entry must not be in the export."""
    store, records, gone = world
    victim = records[20].id
    real = service._spool_survivors
    calls = []

    def spool_then_forget(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result[0])
        if len(calls) == 1:
            service.forget(store, [victim])  # after the shared lock is released
        return result

    monkeypatch.setattr(service, "_spool_survivors", spool_then_forget)
    out = tmp_path / "e.jsonl"
    report = service.export(store, out)
    alive = len(records) - len(gone)
    assert calls == [alive, alive - 1] and report["records"] == alive - 1
    assert victim not in out.read_text()
    assert [e["action"] for e in audit_lines(store)[-2:]] == ["forget", "export"]


def test_a_store_that_keeps_changing_exports_nothing(world, tmp_path, monkeypatch):
    store, records, _ = world
    real = service._spool_survivors
    victims = iter(r.id for r in records[20:])

    def spool_then_forget(*args, **kwargs):
        result = real(*args, **kwargs)
        service.forget(store, [next(victims)])
        return result

    monkeypatch.setattr(service, "_spool_survivors", spool_then_forget)
    out = tmp_path / "e.jsonl"
    with pytest.raises(StoreLocked, match="again"):
        service.export(store, out)
    assert not out.exists() and list(tmp_path.glob(".e.jsonl.*")) == []
    assert audit_lines(store)[-1]["action"] == "forget"


def test_empty_store_export_warns(tmp_path):
    store = tmp_path / "store"
    records = make_records(3, dim=8)
    build_store(store, records, tmp_path, k=2)
    ok("forget", *(r.id for r in records), "--store", str(store))
    out = tmp_path / "e.jsonl"
    r = erase("export", "--output", str(out), "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["records"] == 0 and "empty" in json.loads(r.stdout)["warnings"][0]
    assert "warning:" in r.stderr and out.read_bytes() == b""


# --------------------------------------------------------------------------- ways out


def no_spool_left(directory) -> bool:
    return [p.name for p in directory.iterdir() if p.name.endswith(".partial")] == []


def test_a_second_signal_after_the_audit_commit_leaves_no_partial_file(world, tmp_path):
    """The first signal after the commit point is deferred; a second one ends the process on the
    spot (interrupts.py), which must still remove the spooled copy: nothing else would."""
    store, _, _ = world
    out = tmp_path / "e.jsonl"
    env = clean_env(ERASE_TEST_SIGNAL_AT="committed:SIGTERM,audited:SIGTERM")
    r = erase("export", "--output", str(out), "--store", str(store), env=env)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert not out.exists() and no_spool_left(tmp_path)
    # The entry was committed: the next writing command completes it, and it stays.
    assert erase("recover", "--store", str(store)).returncode == 0
    assert audit_lines(store)[-1]["action"] == "export"


def test_a_signal_before_the_audit_commit_leaves_nothing(world, tmp_path):
    store, _, _ = world
    out = tmp_path / "e.jsonl"
    before = snapshot(store)
    r = erase(
        "export", "--output", str(out), "--store", str(store), env=clean_env(ERASE_TEST_SIGNAL_AT="staged:SIGINT")
    )
    assert r.returncode == 128 + signal.SIGINT and "nothing changed" in r.stderr
    assert not out.exists() and no_spool_left(tmp_path) and snapshot(store) == before


def test_a_failure_after_spooling_leaves_no_partial_file(world, tmp_path, monkeypatch):
    store, _, _ = world

    def full(*args, **kwargs):
        raise DiskFull("no space left")

    monkeypatch.setattr(service, "_audit_export", full)
    with pytest.raises(DiskFull):
        service.export(store, tmp_path / "e.jsonl")
    assert not (tmp_path / "e.jsonl").exists() and no_spool_left(tmp_path)


def test_a_reader_that_stops_early_ends_the_export_quietly(tmp_path):
    """`erase export --output - | head -1`: exit 128 + SIGPIPE like any program in a pipe, no
    traceback, nothing on stderr; the audit entry stays (written before the first record)."""
    store = tmp_path / "store"
    data = write_jsonl(tmp_path / "data.jsonl", make_records(3000, dim=8))  # ~1 MB with vectors: more than a pipe holds
    assert erase("ingest", str(data), "--vector-field", VECTOR_FIELD, "--store", str(store)).returncode == 0
    proc = subprocess.Popen(
        [ERASE, "export", "--output", "-", "--vectors", "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["id"] == "rec-000000-ID"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert err == b""
    entry = audit_lines(store)[-1]
    assert entry["action"] == "export" and entry["to"] == "stdout" and entry["n_records"] == 3000
