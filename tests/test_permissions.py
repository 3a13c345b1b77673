"""Permissions (issue 4, SPEC 4-5): every file and directory of a store is its owner's only after
each writing command, whatever the caller's umask, and the per-store secret never appears in any
command's output nor in any store file but its own."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import ERASE, VECTOR_FIELD, clean_env, find_bytes, make_records, write_jsonl


def run(*args: str) -> subprocess.CompletedProcess:
    """The real CLI under a permissive umask (0), so only erase's own choices decide the modes."""
    return subprocess.run(
        [ERASE, *args], capture_output=True, env=clean_env(), timeout=60, preexec_fn=lambda: os.umask(0)
    )


def loose_modes(root: Path) -> list[str]:
    """Paths under (and including) `root` that the group or others may access."""
    bad = []
    for dirpath, _dirs, files in os.walk(root):
        for p in [Path(dirpath)] + [Path(dirpath) / n for n in files]:
            mode = stat.S_IMODE(os.lstat(p).st_mode)
            if mode & 0o077:
                bad.append(f"{p.relative_to(root.parent)} {oct(mode)}")
    return bad


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Run ingest, fit, forget and every read-only command once; keep each step's outputs and the
    modes after each writing step."""
    tmp = tmp_path_factory.mktemp("perm")
    records = make_records(80, seed=11)
    data = write_jsonl(tmp / "data.jsonl", records[:60])
    more = write_jsonl(tmp / "more.jsonl", records[60:])
    store = tmp / "nested" / "store"
    s = str(store)
    steps = [
        ("ingest", ["ingest", str(data), "--vector-field", VECTOR_FIELD, "--store", s, "--json"]),
        ("fit", ["fit", "-k", "4", "--dim", "8", "--store", s, "--json"]),
        ("forget", ["forget", records[0].id, records[1].id, "--store", s, "--json"]),
        ("append", ["ingest", str(more), "--vector-field", VECTOR_FIELD, "--append", "--store", s]),
        ("refit", ["fit", "-k", "4", "--dim", "8", "--store", s]),
        ("forget-plain", ["forget", records[2].id, "--store", s]),
    ]
    outputs, modes = {}, {}
    for name, args in steps:
        r = run(*args)
        assert r.returncode == 0, (name, r.stderr.decode())
        outputs[name] = r.stdout + r.stderr
        modes[name] = loose_modes(store)
    for name, args in [
        ("status", ["status"]),
        ("status-json", ["status", "--json"]),
        ("log", ["log"]),
        ("log-json", ["log", "--json"]),
        ("log-verify", ["log", "--verify", "--json"]),
        ("verify", ["verify", "--json"]),
        ("dry-run", ["forget", records[3].id, "--dry-run", "--json"]),
    ]:
        r = run(*args, "--store", s)
        assert r.returncode == 0, (name, r.stderr.decode())
        outputs[name] = r.stdout + r.stderr
    errors = run("forget", "no-such-id", "--store", s, "--json")
    assert errors.returncode == 3  # unknown id
    outputs["not-found"] = errors.stdout + errors.stderr
    return store, outputs, modes


@pytest.mark.parametrize("step", ["ingest", "fit", "forget", "append", "refit", "forget-plain"])
def test_store_is_owner_only_after_each_writing_command(session, step):
    _, _, modes = session
    assert modes[step] == [], f"group/other-accessible after {step}: {modes[step]}"


def test_store_is_owner_only_even_after_readers_ran(session):
    store, _, _ = session
    assert loose_modes(store) == []
    assert (store / "secret").exists() and (store / "audit.jsonl").exists()


def test_secret_never_in_output(session):
    store, outputs, _ = session
    secret = (store / "secret").read_bytes()
    assert len(secret) == 32
    needles = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    import base64

    needles.append(base64.b64encode(secret).rstrip(b"="))
    for name, out in outputs.items():
        assert out, name  # every command said something: the check is not vacuous
        for needle in needles:
            assert needle not in out, f"the store secret appears in the output of {name}"


def test_secret_is_in_no_other_store_file(session):
    store, _, _ = session
    secret = (store / "secret").read_bytes()
    hits = find_bytes(store, {"raw": secret, "hex": secret.hex().encode()})
    assert hits == {"raw": ["secret"]}


def test_pre_created_store_directory_is_tightened(tmp_path):
    """A user who made the directory first (mode 0755) still gets an owner-only store."""
    store = tmp_path / "made-by-user"
    store.mkdir(mode=0o755)
    os.chmod(store, 0o755)
    data = write_jsonl(tmp_path / "d.jsonl", make_records(5, seed=2))
    r = run("ingest", str(data), "--vector-field", VECTOR_FIELD, "--store", str(store))
    assert r.returncode == 0, r.stderr.decode()
    assert loose_modes(store) == []


def test_a_world_writable_store_is_warned_about_once_per_command(tmp_path):
    """ingest and export open the store twice (a shared look, then the exclusive write); the
    warning is said once all the same."""
    store = tmp_path / "store"
    records = make_records(12, seed=3)
    first = write_jsonl(tmp_path / "a.jsonl", records[:8])
    assert run("ingest", str(first), "--vector-field", VECTOR_FIELD, "--store", str(store)).returncode == 0
    os.chmod(store, 0o777)
    more = write_jsonl(tmp_path / "b.jsonl", records[8:])
    for args in (
        ["ingest", str(more), "--vector-field", VECTOR_FIELD, "--append"],
        ["export", "--output", str(tmp_path / "e.jsonl")],
        ["status"],
    ):
        r = run(*args, "--store", str(store))
        assert r.returncode == 0, r.stderr.decode()
        assert r.stderr.decode().count("writable by every user") == 1, (args, r.stderr.decode())
