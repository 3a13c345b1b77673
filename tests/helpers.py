"""Shared test utilities for the store's reliability tests (crash, signals, concurrency, hostile
input, permissions): a BYO-vector dataset whose every record carries unique marker text, a
byte-level snapshot of a store, a search for a record's bytes that looks inside compressed zarr
chunks, a runner for the real `erase` console script, and the forget batch that the crash and
signal tests interrupt, with the checks they make afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from erase_cli import audit, service
from erase_cli.errors import StaleFit
from erase_cli.records import normalise_vector
from erase_cli.store import open_store

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bytescan import find_bytes  # noqa: E402 - the one byte scanner, shared with bench/peers.py

ERASE = str(Path(sys.executable).parent / "erase")
VECTOR_FIELD = "vec"
# A fit small enough for a 40-record store, with routes: what the API and server tests answer from.
FIT = dict(k=4, eps=0.1, dim=8, seed=0, max_iter=3, route_size=3)


@dataclass(frozen=True)
class Rec:
    """One record as written to the dataset, with the bytes that must vanish when it is forgotten."""

    id: str
    input: str
    target: str
    vector: list[float]

    def needles(self) -> dict[str, bytes]:
        emb = normalise_vector(self.vector).astype("<f4").tobytes()
        return {"id": self.id.encode(), "input": self.input.encode(), "target": self.target.encode(), "embedding": emb}


def make_records(n: int, dim: int = 16, seed: int = 0, prefix: str = "rec") -> list[Rec]:
    """n records in a few well-separated blobs; ids, inputs and targets are unique marker strings
    that never occur inside one another (fixed-width numbers, distinct tags)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim))
    out = []
    for i in range(n):
        v = centres[i % 6] + 0.35 * rng.normal(size=dim)
        out.append(
            Rec(
                id=f"{prefix}-{i:06d}-ID",
                input=f"question marker QIN{i:06d}QX about blob {i % 6}",
                target=f"answer TGT{i:06d}TX",
                vector=[float(x) for x in v],
            )
        )
    return out


def write_jsonl(path: Path, records: list[Rec]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"id": r.id, "input": r.input, "target": r.target, VECTOR_FIELD: r.vector}) + "\n")
    return path


def snapshot(store_dir: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under the store (the lock file included: it is
    created once and never written)."""
    store_dir = Path(store_dir)
    out = {}
    for dirpath, _, files in os.walk(store_dir):
        for name in files:
            p = Path(dirpath) / name
            out[p.relative_to(store_dir).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def record_needles(records: list[Rec]) -> dict[str, bytes]:
    return {f"{r.id}:{k}": v for r in records for k, v in r.needles().items()}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child `erase`: no ERASE_* from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERASE_")}
    env.update(extra)
    return env


def erase(
    *args: str, env: dict | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run the real console script; text output captured."""
    return subprocess.run(
        [ERASE, *args], capture_output=True, text=True, env=env or clean_env(), timeout=timeout, input=input
    )


def erase_popen(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [ERASE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or clean_env()
    )


def build_store(
    store: Path, records: list[Rec], tmp: Path, *, k: int = 4, dim: int = 8, eps: float = 0.1, max_iter: int = 3
) -> dict:
    """Ingest `records` (BYO vectors) and fit, through the real CLI; returns the fit report."""
    data = write_jsonl(tmp / f"{store.name}-data.jsonl", records)
    r = erase("ingest", str(data), "--vector-field", VECTOR_FIELD, "--store", str(store))
    assert r.returncode == 0, r.stderr
    r = erase(
        "fit",
        "-k",
        str(k),
        "--dim",
        str(dim),
        "--eps",
        str(eps),
        "--max-iter",
        str(max_iter),
        "--store",
        str(store),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def audit_lines(store: Path) -> list[dict]:
    p = Path(store) / "audit.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def refused(
    args: list[str], store: Path | None, *, code: int = 1, kind: str, mentions: list[str], env: dict | None = None
) -> str:
    """Run `erase ARGS --json`; check the exit code, the JSON error object, one stderr line with no
    traceback, and (if `store`) an unchanged store. Returns the message."""
    before = snapshot(store) if store is not None and store.is_dir() else None
    r = erase(*args, "--json", env=env)
    assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["kind"] == kind, err
    assert err["message"] == lines[0][len("error: ") :]
    for word in mentions:
        assert word.lower() in err["message"].lower(), (word, err["message"])
    if before is not None:
        assert snapshot(store) == before
    return err["message"]


# --------------------------------------------------------------------------- an interrupted forget

WORLD_RECORDS = 300


def forget_world(tmp: Path, n_records: int = WORLD_RECORDS) -> dict:
    """A fitted template store, a forget batch (two in-context examples and four other records),
    and an uninterrupted reference run of that forget: the store it leaves, its manifest, its
    report and how long it took."""
    records = make_records(n_records)
    template = tmp / "template"
    fit = build_store(template, records, tmp)
    examples = [e["id"] for e in fit["examples"]]
    assert len(examples) >= 2
    others = [r.id for r in records if r.id not in examples][:: n_records // 4][:4]
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
    return {
        "tmp": tmp,
        "template": template,
        "n_records": n_records,
        "batch": batch,
        "ids_file": ids_file,
        "reference": reference,
        "reference_manifest": (reference / "manifest.json").read_bytes(),
        "duration": duration,
        "report": report,
    }


def copy_store(world: dict, name: str) -> Path:
    """A fresh copy of the world's template store, named `name`."""
    store = world["tmp"] / name
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(world["template"], store)
    return store


def visible(store: Path, ids: list[str]) -> list[bool]:
    """Which ids a reader sees as present (through a pending journal)."""
    with open_store(store, write=False) as st:
        return [bool(r >= 0) for r in st.lookup(ids)]


def check_read_only(store: Path, ids: list[str], *, via_cli: bool) -> tuple[bool, dict]:
    """Readers after an interruption: status, verify and `log --verify` exit 0 (verify identical,
    chain valid; a stale fit, after `ingest --append`, is refused as stale instead), report a
    pending journal as what it is, and change nothing; `ids` are visible all or none. Returns
    (whether they are visible, the status report)."""
    journal = store / "journal"
    before = snapshot(store)
    if via_cli:
        r = erase("status", "--store", str(store), "--json")
        assert r.returncode == 0, r.stderr
        status = json.loads(r.stdout)
        stale = bool((status["fit"] or {}).get("stale"))
        v = erase("verify", "--store", str(store), "--json")
        if stale:
            assert v.returncode == 1 and json.loads(v.stdout)["error"]["kind"] == "stale_fit", v.stdout
        else:
            assert v.returncode == 0, v.stderr
            assert json.loads(v.stdout)["identical"] is True
        lg = erase("log", "--verify", "--store", str(store))
        assert lg.returncode == 0, lg.stdout + lg.stderr
        if journal.exists():
            assert "pending" in r.stderr and "pending" in v.stderr
    else:
        notes: list[str] = []
        status = service.status(store, hooks=service.Hooks(say=notes.append))
        stale = bool((status["fit"] or {}).get("stale"))
        try:
            identical = service.verify(store)["identical"]
        except StaleFit:
            identical = "stale"
        assert identical == ("stale" if stale else True), identical
        assert service.log(store, check=True)["valid"] is True
        if journal.exists():
            assert any("pending" in n for n in notes), notes
    if (journal / "journal.json").exists():
        action = json.loads((journal / "journal.json").read_bytes())["action"]
        assert status["pending"] == {"committed": True, "action": action, "forgotten_data_on_disk": action == "forget"}
    elif journal.exists():
        assert status["pending"] == {"committed": False}
    else:
        assert status["pending"] is None
    seen = visible(store, ids)
    assert snapshot(store) == before, "a read-only command changed the store"
    assert all(seen) or not any(seen), f"batch half applied: {seen}"
    return all(seen), status


def forget_log_counts(store: Path, ids: list[str]) -> list[int]:
    """How many times each id's keyed hash appears in the audit log's forget entries."""
    secret = (Path(store) / "secret").read_bytes()
    logged = [h for e in audit_lines(store) if e["action"] == "forget" for h in e["id_hashes"]]
    return [logged.count(audit.id_hash(secret, rid)) for rid in ids]


def check_forgotten(world: dict, store: Path) -> None:
    """The world's batch is forgotten and finished: no journal, the fit verifies, the manifest
    equals the uninterrupted run's, no byte of a forgotten record is left (chunks decompressed),
    and the audit chain is valid with each id's hash logged exactly once."""
    ids = [r.id for r in world["batch"]]
    assert not (store / "journal").exists()
    assert service.verify(store)["identical"] is True
    assert (store / "manifest.json").read_bytes() == world["reference_manifest"]
    assert find_bytes(store, record_needles(world["batch"])) == {}
    assert service.log(store, check=True)["valid"] is True
    assert forget_log_counts(store, ids) == [1] * len(ids), ids


def recover_and_check(world: dict, store: Path, applied_before: bool, *, via_cli: bool) -> None:
    """The next writing command (cron re-running the same forget) completes or rolls back what
    it finds, says so, and leaves the batch forgotten (check_forgotten)."""
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
    check_forgotten(world, store)


def signal_at_random(
    args: list[str],
    store: Path,
    sig: int,
    rng: random.Random,
    *,
    duration: float,
    phase: str = "any",
    within: float | None = None,
) -> tuple[subprocess.CompletedProcess, float]:
    """Run `erase ARGS --store STORE` and send it `sig` at a random instant: uniform over its
    whole run ("any": `duration` is how long an uninterrupted run takes; mostly interpreter
    start-up), within `within` s (default 0.25) after its journal directory appears ("staging"),
    or within `within` s (default 0.02) after its journal is committed ("apply": renames, audit
    append, clean-up). Returns the finished process and the delay (s)."""
    journal = store / "journal"
    marker = {"staging": journal, "apply": journal / "journal.json"}.get(phase)
    proc = erase_popen(*args, "--store", str(store))
    t0 = time.monotonic()
    if marker is None:
        time.sleep(rng.uniform(0.0, duration))
    else:
        while not marker.exists() and proc.poll() is None and time.monotonic() - t0 < 30:
            time.sleep(0.0002)
        time.sleep(rng.uniform(0.0, within if within is not None else 0.25 if phase == "staging" else 0.02))
    delay = time.monotonic() - t0
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), round(delay, 3)


def http(url: str, method: str = "GET", body: bytes | dict | None = None, key: str | None = None, timeout=120):
    """(status, headers, parsed JSON or raw bytes) of one plain HTTP request, errors included."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw
