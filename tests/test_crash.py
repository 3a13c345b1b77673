"""Crash safety of a forget batch (issue 4, SPEC 3-4): a real `erase forget` subprocess killed at
named points of the transaction (ERASE_TEST_CRASH_AT, which ends the process with os._exit) and at
random instants (SIGKILL after a random delay). After each crash:

- read-only commands exit 0, report the pending operation and change nothing;
- the batch is visible entirely or not at all;
- the next writing command (cron re-running the same forget) completes or rolls back, says so,
  and leaves a store whose fit verifies, whose manifest equals an uninterrupted run's, that holds
  no byte of a forgotten record (chunks decompressed), and whose audit chain is valid with each
  id's hash logged exactly once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from erase_cli import audit, service
from erase_cli.store import open_store
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
    write_jsonl,
)

N_RECORDS = 300
RANDOM_KILLS = 9
# Fixed so a failure can be replayed; the instants still vary with the machine's timing.
KILL_SEED = int(os.environ.get("ERASE_TEST_KILL_SEED", "20261123"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A fitted template store, the batch (examples and non-examples), and an uninterrupted
    reference run of the same forget: its manifest and how long it took."""
    tmp = tmp_path_factory.mktemp("crash")
    records = make_records(N_RECORDS)
    template = tmp / "template"
    fit = build_store(template, records, tmp)
    examples = [e["id"] for e in fit["examples"]]
    assert len(examples) >= 2
    others = [r.id for r in records if r.id not in examples][:: N_RECORDS // 4][:4]
    batch_ids = examples[:2] + others
    by_id = {r.id: r for r in records}
    batch = [by_id[i] for i in batch_ids]
    ids_file = tmp / "ids.txt"
    ids_file.write_text("\n".join(batch_ids) + "\n")

    reference = tmp / "reference"
    shutil.copytree(template, reference)
    t0 = time.monotonic()
    r = erase("forget", "--from-file", str(ids_file), "--store", str(reference), "--json")
    duration = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [i["status"] for i in report["ids"]] == ["forgotten"] * len(batch_ids)
    return {"tmp": tmp, "template": template, "batch": batch, "ids_file": ids_file,
            "reference_manifest": (reference / "manifest.json").read_bytes(), "duration": duration,
            "report": report}


def _copy(world, name: str) -> Path:
    store = world["tmp"] / name
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(world["template"], store)
    return store


def _visible(store: Path, ids: list[str]) -> list[bool]:
    """Which ids a reader sees as present (through a pending journal)."""
    with open_store(store, write=False) as st:
        return [bool(r >= 0) for r in st.lookup(ids)]


def _check_read_only(store: Path, ids: list[str], *, via_cli: bool) -> bool:
    """Readers after a crash: exit 0, report pending, change nothing. Returns whether the batch is
    visible as applied (and asserts it is all or nothing)."""
    journal = store / "journal"
    before = snapshot(store)
    if via_cli:
        r = erase("status", "--store", str(store), "--json")
        assert r.returncode == 0, r.stderr
        pending = json.loads(r.stdout)["pending"]
        v = erase("verify", "--store", str(store), "--json")
        assert v.returncode == 0, v.stderr
        assert json.loads(v.stdout)["identical"] is True
        lg = erase("log", "--verify", "--store", str(store))
        assert lg.returncode == 0, lg.stdout + lg.stderr
        if journal.exists():
            assert "pending" in r.stderr and "pending" in v.stderr
    else:
        notes: list[str] = []
        pending = service.status(store, hooks=service.Hooks(say=notes.append))["pending"]
        assert service.verify(store)["identical"] is True
        assert service.log(store, check=True)["valid"] is True
        if journal.exists():
            assert any("pending" in n for n in notes), notes
    if (journal / "journal.json").exists():
        assert pending == {"committed": True, "action": "forget", "forgotten_data_on_disk": True}
    elif journal.exists():
        assert pending == {"committed": False}
    else:
        assert pending is None
    visible = _visible(store, ids)
    assert snapshot(store) == before, "a read-only command changed the store"
    assert all(visible) or not any(visible), f"batch half applied: {visible}"
    return not any(visible)


def _recover_and_check(world, store: Path, applied_before: bool, *, via_cli: bool) -> None:
    ids = [r.id for r in world["batch"]]
    had_journal = (store / "journal").exists()
    committed = (store / "journal" / "journal.json").exists()
    if via_cli:
        r = erase("forget", "--from-file", str(world["ids_file"]), "--store", str(store), "--json")
        assert r.returncode == 0, r.stderr
        report, notes = json.loads(r.stdout), r.stderr
    else:
        said: list[str] = []
        report = service.forget(store, ids, hooks=service.Hooks(say=said.append))
        notes = "\n".join(said)
    if committed:
        assert "completed an interrupted forget" in notes
    elif had_journal:
        assert "rolled back an interrupted operation" in notes
    statuses = {i["status"] for i in report["ids"]}
    assert statuses == ({"already_forgotten"} if applied_before else {"forgotten"}), report["ids"]

    assert not (store / "journal").exists()
    assert service.verify(store)["identical"] is True
    assert (store / "manifest.json").read_bytes() == world["reference_manifest"]
    assert find_bytes(store, record_needles(world["batch"])) == {}
    assert service.log(store, check=True)["valid"] is True
    secret = (store / "secret").read_bytes()
    logged = [h for e in audit_lines(store) if e["action"] == "forget" for h in e["id_hashes"]]
    for rid in ids:
        assert logged.count(audit.id_hash(secret, rid)) == 1, rid


def test_search_finds_a_batch_record_before_forgetting(world):
    """The byte search must be able to fail: every needle of the batch is on disk beforehand,
    the text ones only inside zstd-compressed chunks."""
    hits = find_bytes(world["template"], record_needles(world["batch"]))
    assert set(hits) == set(record_needles(world["batch"]))
    plain = {k for k, paths in hits.items() if any(not p.startswith("records.zarr/") for p in paths)}
    non_example = world["batch"][-1]
    assert f"{non_example.id}:input" not in plain  # only findable by decompressing


CRASH_POINTS = ["staged", "committed", "apply:1", "apply:5", "applied", "audited"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_forget_killed_at_a_named_point(world, point):
    store = _copy(world, f"at-{point.replace(':', '-')}")
    r = erase("forget", "--from-file", str(world["ids_file"]), "--store", str(store),
              env=clean_env(ERASE_TEST_CRASH_AT=point))
    assert r.returncode == 137, (point, r.returncode, r.stderr)  # it really stopped there
    assert (store / "journal").exists()
    ids = [rec.id for rec in world["batch"]]
    # The real CLI for the two journal states (uncommitted, committed); in-process for the rest.
    via_cli = point in ("staged", "apply:5")
    applied = _check_read_only(store, ids, via_cli=via_cli)
    assert applied == (point != "staged")  # the journal write is the commit point
    _recover_and_check(world, store, applied, via_cli=True)


def _kill_at_random(store: Path, world, rng: random.Random, phase: str) -> tuple[float, str]:
    """SIGKILL a forget at a uniform instant of its whole run ("any": mostly interpreter start-up),
    within 0.25 s after its journal directory appears ("staging"), or within 20 ms after its
    journal is committed ("apply": renames, audit append, clean-up)."""
    journal = store / "journal"
    marker = {"staging": journal, "apply": journal / "journal.json"}.get(phase)
    proc = erase_popen("forget", "--from-file", str(world["ids_file"]), "--store", str(store))
    t0 = time.monotonic()
    if marker is None:
        time.sleep(rng.uniform(0.0, world["duration"]))
    else:
        while not marker.exists() and proc.poll() is None and time.monotonic() - t0 < 30:
            time.sleep(0.0002)
        time.sleep(rng.uniform(0.0, 0.25 if phase == "staging" else 0.02))
    delay = time.monotonic() - t0
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    state = ("finished" if proc.returncode == 0 else
             "committed" if (journal / "journal.json").exists() else
             "staging" if journal.exists() else "no journal")
    return round(delay, 3), state


def test_forget_sigkilled_at_random_instants(world):
    rng = random.Random(KILL_SEED)
    ids = [rec.id for rec in world["batch"]]
    outcomes = []
    for i in range(RANDOM_KILLS):
        store = _copy(world, "random")
        delay, state = _kill_at_random(store, world, rng, ("any", "staging", "apply")[i % 3])
        applied = _check_read_only(store, ids, via_cli=i == 1)
        _recover_and_check(world, store, applied, via_cli=i == 1)
        outcomes.append((delay, state, applied))
    # Timing-dependent, so not asserted; shown with -rA or on failure.
    print("kill outcomes (delay s, state, applied):", outcomes)


def test_forget_killed_mid_audit_append(world):
    """A kill while appending the audit entry leaves a torn last line: readers show the committed
    state with a valid chain, and the next writer drops the torn line and appends the entry once."""
    store = _copy(world, "torn-audit")
    r = erase("forget", "--from-file", str(world["ids_file"]), "--store", str(store),
              env=clean_env(ERASE_TEST_CRASH_AT="applied"))
    assert r.returncode == 137, r.stderr
    # The torn line is the start of the entry the committed journal appends (a crash cut that
    # append); any other torn tail would be an edit, which writers refuse (test_guarantees.py).
    entry = json.loads((store / "journal" / "journal.json").read_bytes())["audit"]
    with open(store / "audit.jsonl", "ab") as f:
        f.write(audit.entry_line(entry)[:40])
    ids = [rec.id for rec in world["batch"]]
    lg = erase("log", "--verify", "--store", str(store), "--json")
    assert lg.returncode == 0, lg.stderr
    assert json.loads(lg.stdout.splitlines()[-1])["verify"]["valid"] is True
    applied = _check_read_only(store, ids, via_cli=False)
    assert applied
    _recover_and_check(world, store, applied, via_cli=True)


@pytest.mark.parametrize("command,point", [("append", "staged"), ("append", "apply:3"),
                                           ("fit", "committed"), ("first-ingest", "committed")])
def test_ingest_and_fit_killed(world, command, point):
    """Ingest and fit are one transaction too: all or nothing for readers, completed or rolled
    back by the next writing command."""
    tmp = world["tmp"]
    extra = make_records(20, seed=99, prefix="extra")
    data = write_jsonl(tmp / "extra.jsonl", extra)
    if command == "first-ingest":
        store = tmp / "first-ingest"
        shutil.rmtree(store, ignore_errors=True)
        args = ["ingest", str(data), "--vector-field", "vec"]
    else:
        store = _copy(world, f"{command}-{point.replace(':', '-')}")
        args = (["ingest", str(data), "--vector-field", "vec", "--append"] if command == "append"
                else ["fit", "-k", "3", "--dim", "8"])
    r = erase(*args, "--store", str(store), env=clean_env(ERASE_TEST_CRASH_AT=point))
    assert r.returncode == 137, r.stderr
    before = snapshot(store)
    st = erase("status", "--store", str(store), "--json")
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert snapshot(store) == before
    assert status["pending"] == ({"committed": False} if point == "staged" else
                                 {"committed": True, "action": args[0], "forgotten_data_on_disk": False})
    expect_applied = point != "staged"
    if command in ("append", "first-ingest"):
        base = 0 if command == "first-ingest" else N_RECORDS
        assert status["records"] == base + (len(extra) if expect_applied else 0)
    else:
        assert status["fit"]["k"] == (3 if expect_applied else 4)
    # The next writing command recovers first, and says so.
    fit = erase("fit", "-k", "3", "--dim", "8", "--store", str(store))
    assert fit.returncode == 0, fit.stderr
    assert ("completed an interrupted" if expect_applied else "rolled back") in fit.stderr
    assert not (store / "journal").exists()
    assert service.verify(store)["identical"] is True
    assert service.log(store, check=True)["valid"] is True
    actions = [e["action"] for e in audit_lines(store)]
    # The template logged one ingest and one fit; the interrupted command is logged once if it
    # committed, and the recovering fit once more.
    base = {"ingest": 0, "fit": 0} if command == "first-ingest" else {"ingest": 1, "fit": 1}
    base[args[0]] += expect_applied
    base["fit"] += 1
    assert {a: actions.count(a) for a in base} == base, actions
