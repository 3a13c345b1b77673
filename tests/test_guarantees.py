"""Deletion guarantees against a hostile tester (issue 8): every failure found is reproduced here
with the real console script, and must now be refused as damage (exit 1, one line, no change) or
handled so that the store stays "as before or as after":

1. a signal after the commit point no longer deletes the committed journal;
2. a planted journal cannot write or delete outside the store;
3. symbolic links inside the store are never followed;
4. a missing, shortened or rewritten audit log is detected and refused by writers;
5. a missing file is damage, not "absent";
6. store.json carries a keyed mac;
7. the remaining tracebacks are one-line errors.
Plus the weak spots: read-only commands write nothing, key permissions, an external key, control
characters, distinct forgotten counts, `would_forget`, `erase recover`, the format upgrade.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import orjson
import pytest
from helpers import (
    build_store,
    clean_env,
    erase,
    find_bytes,
    make_records,
    record_needles,
    refused,
    snapshot,
    write_jsonl,
)

from erase_cli import audit
from erase_cli.qkmeans import id_hash64
from erase_cli.store import index_rel, shard_of

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The issue's setup S: BYO 16-d vectors, fitted, two ids forgotten."""
    tmp = tmp_path_factory.mktemp("guarantees")
    records = make_records(120, seed=3)
    store = tmp / "template"
    fit = build_store(store, records, tmp)
    r = erase("forget", records[10].id, records[11].id, "--store", str(store))
    assert r.returncode == 0, r.stderr
    return store, records, fit


@pytest.fixture
def store(template, tmp_path):
    dst = tmp_path / "S"
    shutil.copytree(template[0], dst)
    return dst


def rid(template, i: int) -> str:
    return template[1][i].id


def ok(*args: str, env: dict | None = None) -> str:
    r = erase(*args, env=env)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r.stdout


def verify_ok(store: Path) -> None:
    out = json.loads(ok("verify", "--store", str(store), "--json"))
    assert out["identical"] is True, out
    ok("log", "--verify", "--store", str(store))


# --------------------------------------------------------------------------- 1. signals


def test_signal_after_commit_point_finishes_the_batch(store, template):
    """The issue's brick: SIGINT once the journal is committed used to delete it. Now the batch
    is finished (purge included) and the command exits 0 with its normal report."""
    victims = [template[1][i] for i in (20, 21)]
    r = erase(
        "forget",
        victims[0].id,
        victims[1].id,
        "--store",
        str(store),
        "--json",
        env=clean_env(ERASE_TEST_SIGNAL_AT="committed:SIGINT"),
    )
    assert r.returncode == 0, r.stderr
    assert "finishing the committed change" in r.stderr
    assert [i["status"] for i in json.loads(r.stdout)["ids"]] == ["forgotten"] * 2
    assert not (store / "journal").exists()
    assert find_bytes(store, record_needles(victims)) == {}
    verify_ok(store)


@pytest.mark.parametrize("point,sig", [("begin", "SIGINT"), ("staged", "SIGTERM"), ("staged", "SIGHUP")])
def test_signal_before_commit_point_rolls_back(store, template, point, sig):
    before = snapshot(store)
    r = erase("forget", rid(template, 20), "--store", str(store), env=clean_env(ERASE_TEST_SIGNAL_AT=f"{point}:{sig}"))
    import signal as signal_mod

    assert r.returncode == 128 + signal_mod.Signals[sig], r.stderr
    assert "nothing changed" in r.stderr and "Traceback" not in r.stderr
    assert not (store / "journal").exists()
    assert snapshot(store) == before


def test_second_signal_leaves_the_committed_journal_for_the_next_writer(store, template):
    victim = template[1][22]
    r = erase(
        "forget",
        victim.id,
        "--store",
        str(store),
        env=clean_env(ERASE_TEST_SIGNAL_AT="committed:SIGINT,apply:1:SIGTERM"),
    )
    assert r.returncode == 143, r.stderr
    assert (store / "journal" / "journal.json").exists()
    st = json.loads(ok("status", "--store", str(store), "--json"))
    assert st["pending"] == {"action": "forget", "committed": True, "forgotten_data_on_disk": True}
    human = erase("status", "--store", str(store))
    assert "forgotten data is still on disk" in human.stdout and "erase recover" in human.stdout
    out = json.loads(ok("recover", "--store", str(store), "--json"))
    assert out["recovered"] == {"action": "forget", "outcome": "completed"}
    assert find_bytes(store, record_needles([victim])) == {}
    verify_ok(store)


# --------------------------------------------------------------------------- 2. planted journal


def test_planted_journal_cannot_reach_outside_the_store(store, tmp_path):
    (store / "journal" / "files").mkdir(parents=True)
    (store / "journal" / "x").mkdir()
    (store / "journal" / "x" / "evil.sh").write_text("echo pwned\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    (store / "journal" / "journal.json").write_text(
        json.dumps({"action": "fit", "replaces": ["../x/evil.sh"], "deletes": ["../victim.txt"], "audit": None})
    )
    for args in (["fit", "--dim", "8"], ["status"], ["forget", "anything"]):
        refused(
            [*args, "--store", str(store)],
            store,
            kind="store_damaged",
            mentions=["journal", "not a file of the store format"],
        )
    assert victim.read_text() == "keep\n"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "entry",
    [{"replaces": ["/etc/passwd"]}, {"deletes": ["fit/../../v"]}, {"deletes": ["records.zarr"]}, {"action": "rm"}],
)
def test_journal_names_are_checked_one_by_one(store, entry):
    journal = {"action": "fit", "replaces": [], "deletes": [], "audit": None, **entry}
    (store / "journal").mkdir()
    (store / "journal" / "journal.json").write_text(json.dumps(journal))
    refused(["fit", "--dim", "8", "--store", str(store)], store, kind="store_damaged", mentions=["journal"])


# --------------------------------------------------------------------------- 3. symbolic links


@pytest.mark.parametrize(
    "name", ["fit", "index", "records.zarr", "audit.jsonl", "cache", "journal", "records.zarr/emb", "manifest.json"]
)
def test_symlinks_inside_the_store_are_refused(store, template, tmp_path, name):
    target = store / name
    outside = tmp_path / "elsewhere"
    if name == "cache":
        target.mkdir()
    if name == "journal":
        target.mkdir()
        (target / "files").mkdir()
    shutil.move(str(target), str(outside))
    target.symlink_to(outside, target_is_directory=outside.is_dir())
    before_outside = snapshot(outside) if outside.is_dir() else outside.read_bytes()
    refused(
        ["forget", rid(template, 30), "--store", str(store)],
        store,
        kind="store_damaged",
        mentions=[name, "symbolic link"],
    )
    assert (snapshot(outside) if outside.is_dir() else outside.read_bytes()) == before_outside


def test_store_path_itself_may_be_a_symlink(store, template, tmp_path):
    link = tmp_path / "link-to-store"
    link.symlink_to(store, target_is_directory=True)
    ok("forget", rid(template, 31), "--store", str(link))
    verify_ok(link)


# --------------------------------------------------------------------------- 4. audit log


def test_removed_audit_log_is_detected_and_refused(store, template):
    (store / "audit.jsonl").unlink()
    refused(
        ["forget", rid(template, 20), "--store", str(store)],
        store,
        kind="store_damaged",
        mentions=["audit", "missing", "backup"],
    )
    r = erase("log", "--verify", "--store", str(store))
    assert r.returncode == 1 and "BROKEN" in r.stdout


def test_cut_last_audit_line_is_refused(store, template):
    log = store / "audit.jsonl"
    data = log.read_bytes()
    last = data[:-1].rfind(b"\n") + 1
    log.write_bytes(data[: last + (len(data) - last) // 2])
    refused(["forget", rid(template, 20), "--store", str(store)], store, kind="store_damaged", mentions=["audit"])
    assert erase("log", "--verify", "--store", str(store)).returncode == 1


def test_rehashed_history_with_reset_head_is_detected(store):
    """Delete every forget entry, re-hash the chain with plain sha256 and reset audit_head: the
    chain is keyed and store.json is under the key, so both are caught."""
    entries = [json.loads(line) for line in (store / "audit.jsonl").read_text().splitlines()]
    kept, prev = [], audit.GENESIS
    for e in (e for e in entries if e["action"] != "forget"):
        e = dict(e, seq=len(kept), prev=prev)
        e["hash"] = hashlib.sha256(audit.canonical({k: v for k, v in e.items() if k != "hash"})).hexdigest()
        kept.append(e)
        prev = e["hash"]
    (store / "audit.jsonl").write_bytes(b"".join(audit.entry_line(e) for e in kept))
    r = erase("log", "--verify", "--store", str(store))
    assert r.returncode == 1 and "keyed hash" in r.stdout
    meta = orjson.loads((store / "store.json").read_bytes())
    meta["audit_head"] = prev
    (store / "store.json").write_bytes(orjson.dumps(meta))
    refused(["log", "--verify", "--store", str(store)], store, kind="store_damaged", mentions=["store.json", "keyed"])


def test_head_and_expect_head(store, template):
    head = ok("log", "--head", "--store", str(store)).strip()
    assert head == orjson.loads((store / "store.json").read_bytes())["audit_head"]
    ok("forget", rid(template, 40), "--store", str(store))
    ok("log", "--verify", "--expect-head", head, "--store", str(store))
    r = erase("log", "--verify", "--expect-head", "f" * 64, "--store", str(store))
    assert r.returncode == 1 and "BROKEN" in r.stdout


# --------------------------------------------------------------------------- 5. missing files


def _shard_of(record_id: str) -> str:
    return index_rel(int(shard_of(id_hash64([record_id]))[0]))


@pytest.mark.parametrize(
    "missing,args",
    [
        ("forgotten.json", ["forget", "ID10"]),
        ("forgotten.json", ["ingest", "DATA", "--vector-field", "vec", "--append"]),
        ("secret", ["forget", "ID10"]),
        ("secret", ["ingest", "DATA", "--vector-field", "vec", "--append"]),
        ("SHARD", ["forget", "ID50", "--missing-ok"]),
        ("index", ["fit", "--dim", "8"]),
        ("fit/state.npz", ["forget", "EXAMPLE"]),
        ("manifest.json", ["forget", "ID50"]),
        ("fit/state.npz", ["verify"]),
        ("records.zarr/ids/c/0", ["ingest", "DATA", "--vector-field", "vec", "--append"]),
        ("records.zarr/emb/c/0/0", ["fit", "--dim", "8"]),
        ("records.zarr/emb/c/0/0", ["verify"]),
        ("records.zarr/data/zarr.json", ["ingest", "DATA", "--vector-field", "vec", "--append"]),
    ],
)
def test_missing_file_is_damage(store, template, tmp_path, missing, args):
    records = template[1]
    data = write_jsonl(tmp_path / "more.jsonl", make_records(3, seed=5, prefix="more"))
    names = {
        "ID10": records[10].id,
        "ID50": records[50].id,
        "DATA": str(data),
        "EXAMPLE": template[2]["examples"][0]["id"],
    }
    if missing == "SHARD":
        missing = _shard_of(records[50].id)
    path = store / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    refused(
        [*(names.get(a, a) for a in args), "--store", str(store)],
        store,
        kind="store_damaged",
        mentions=[missing.split("/")[0], "missing", "backup"],
    )


def test_broken_zarr_json_is_damage(store, tmp_path):
    (store / "records.zarr" / "ids" / "zarr.json").write_text("{ not json")
    data = write_jsonl(tmp_path / "more.jsonl", make_records(3, seed=5, prefix="more"))
    refused(
        ["ingest", str(data), "--vector-field", "vec", "--append", "--store", str(store)],
        store,
        kind="store_damaged",
        mentions=["zarr.json", "checksum"],
    )


# --------------------------------------------------------------------------- 6. store.json


def test_store_json_edit_with_recomputed_plain_checksum_is_damage(store, tmp_path):
    meta = orjson.loads((store / "store.json").read_bytes())
    meta["n_slots"] = 10
    meta.pop("mac")
    meta["mac"] = hashlib.sha256(audit.canonical(meta)).hexdigest()
    (store / "store.json").write_bytes(orjson.dumps(meta))
    data = write_jsonl(tmp_path / "more.jsonl", make_records(3, seed=5, prefix="more"))
    for args in (["status"], ["ingest", str(data), "--vector-field", "vec", "--append"]):
        refused([*args, "--store", str(store)], store, kind="store_damaged", mentions=["store.json", "damaged"])


def test_store_json_removed_is_damage_not_a_new_store(store, tmp_path):
    (store / "store.json").unlink()
    data = write_jsonl(tmp_path / "more.jsonl", make_records(3, seed=5, prefix="more"))
    refused(
        ["ingest", str(data), "--vector-field", "vec", "--store", str(store)],
        store,
        kind="store_damaged",
        mentions=["store.json", "missing"],
    )


# --------------------------------------------------------------------------- 7. one-line errors


def test_lock_that_is_a_directory(store):
    (store / "lock").unlink(missing_ok=True)
    (store / "lock").mkdir()
    for args in (["status"], ["forget", "x"], ["fit"]):
        refused([*args, "--store", str(store)], store, kind="store_damaged", mentions=["lock", "rm -r"])


@pytest.mark.parametrize(
    "args,mentions",
    [
        (["fit", "-k", "100000000000000000000"], ["k must be between"]),
        (["fit", "-k", "20000"], ["k must be between"]),
        (["fit", "--max-iter", "100000000"], ["max_iter must be between"]),
    ],
)
def test_fit_parameter_limits(store, args, mentions):
    refused([*args, "--store", str(store)], store, kind="invalid_parameter", mentions=mentions)


def test_garbage_last_audit_line_names_the_problem(store, template):
    with open(store / "audit.jsonl", "ab") as f:
        f.write(b"garbage\n")
    msg = refused(["forget", rid(template, 20), "--store", str(store)], store, kind="store_damaged", mentions=["audit"])
    assert "None" not in msg


# --------------------------------------------------------------------------- weak spots


def test_readers_write_nothing_in_any_directory(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for cmd in ("status", "verify", "log"):
        refused([cmd, "--store", str(plain)], None, kind="store_missing", mentions=["erase ingest"])
    assert list(plain.iterdir()) == []


def test_readers_take_lock_timeout(store):
    import fcntl

    fd = os.open(store / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        for cmd in ("status", "verify", "log"):
            refused(
                [cmd, "--store", str(store), "--lock-timeout", "0"],
                store,
                code=75,
                kind="store_locked",
                mentions=["locked"],
            )
            r = erase(cmd, "--store", str(store), env=clean_env(ERASE_LOCK_TIMEOUT="0.1"))
            assert r.returncode == 75, r.stderr
    finally:
        os.close(fd)


def test_group_readable_secret_is_refused(store, template):
    os.chmod(store / "secret", 0o640)
    refused(["forget", rid(template, 20), "--store", str(store)], store, kind="insecure_key", mentions=["chmod 600"])


def test_world_writable_store_is_warned_about(store):
    os.chmod(store, 0o777)
    r = erase("status", "--store", str(store))
    assert r.returncode == 0 and "writable by every user" in r.stderr


def test_external_key(tmp_path):
    key = tmp_path / "key"
    key.write_text(os.urandom(32).hex() + "\n")
    os.chmod(key, 0o600)
    records = make_records(40, seed=9)
    data = write_jsonl(tmp_path / "d.jsonl", records)
    store = tmp_path / "ext"
    env = clean_env(ERASE_SECRET_FILE=str(key))
    ok("ingest", str(data), "--vector-field", "vec", "--store", str(store), env=env)
    ok("fit", "--dim", "8", "-k", "3", "--store", str(store), "--secret-file", str(key))
    ok("forget", records[3].id, "--store", str(store), env=env)
    assert not (store / "secret").exists()
    # A copy of the store alone is not enough to read it, nor to test guessed ids.
    refused(["status", "--store", str(store)], store, kind="key_mismatch", mentions=["--secret-file"])
    other = tmp_path / "other-key"
    other.write_bytes(os.urandom(32))
    os.chmod(other, 0o600)
    refused(
        ["status", "--store", str(store), "--secret-file", str(other)],
        store,
        kind="key_mismatch",
        mentions=["not the key"],
    )
    out = json.loads(ok("verify", "--store", str(store), "--json", env=env))
    assert out["identical"] is True
    ok("log", "--verify", "--store", str(store), env=env)


def test_control_characters_are_escaped_for_people(tmp_path):
    records = make_records(30, seed=4)
    data = tmp_path / "d.jsonl"
    write_jsonl(data, records)
    store = tmp_path / "ctl"
    ok("ingest", str(data), "--vector-field", "vec", "--store", str(store))
    evil = "evil\x1b]0;pwned\x07id"
    r = erase("forget", evil, "--missing-ok", "--store", str(store))
    assert r.returncode == 0
    assert "\x1b" not in r.stderr and "\\x1b" in r.stderr
    r = erase("forget", evil, "--missing-ok", "--store", str(store), "--json")
    assert json.loads(r.stdout)["ids"][0]["id"] == evil  # JSON stays exact


def test_status_counts_distinct_ids_and_dry_run_says_would_forget(store, template, tmp_path):
    out = json.loads(ok("forget", rid(template, 60), "--dry-run", "--store", str(store), "--json"))
    assert [i["status"] for i in out["ids"]] == ["would_forget"]
    # Relearn a forgotten id and forget it again: one id, two forget events.
    rec = template[1][10]
    data = write_jsonl(tmp_path / "again.jsonl", [rec])
    ok("ingest", str(data), "--vector-field", "vec", "--append", "--allow-relearn", "--store", str(store))
    ok("forget", rec.id, "--store", str(store))
    st = json.loads(ok("status", "--store", str(store), "--json"))
    assert st["forgotten"] == 2  # ids 10 and 11


# --------------------------------------------------------------------------- upgrade


def test_store_of_format_1_is_read_then_upgraded_once(tmp_path):
    """tests/fixtures/store-v1 was written by erase before this change (format erase-store/1)."""
    store = tmp_path / "v1"
    shutil.copytree(FIXTURES / "store-v1", store)
    os.chmod(store / "secret", 0o600)
    before = snapshot(store)
    st = json.loads(ok("status", "--store", str(store), "--json"))
    assert st["format"] == "erase-store/1"
    ok("log", "--verify", "--store", str(store))
    assert json.loads(ok("verify", "--store", str(store), "--json"))["identical"] is True
    assert snapshot(store) == before  # readers accept the old format and change nothing
    first = json.loads(ok("status", "--store", str(store), "--json"))["fit"]["examples"][0]["id"]
    r = erase("forget", first, "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    assert "upgraded store" in r.stderr
    meta = orjson.loads((store / "store.json").read_bytes())
    assert meta["format"] == "erase-store/2" and "mac" in meta
    # The old format left out the all-empty first embedding chunk; format 2 has every chunk.
    assert (store / "records.zarr" / "emb" / "c" / "0" / "0").is_file()
    actions = [json.loads(line)["action"] for line in (store / "audit.jsonl").read_text().splitlines()]
    assert actions[-2:] == ["upgrade", "forget"] and actions.count("upgrade") == 1
    verify_ok(store)
    ok("fit", "--store", str(store), "--dim", "8", "-k", "3")
    actions = [json.loads(line)["action"] for line in (store / "audit.jsonl").read_text().splitlines()]
    assert actions.count("upgrade") == 1
    verify_ok(store)
