"""Shared test utilities for the store's reliability tests (crash, concurrency, hostile input,
permissions): a BYO-vector dataset whose every record carries unique marker text, a byte-level
snapshot of a store, a search for a record's bytes that looks inside compressed zarr chunks, and a
runner for the real `erase` console script.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numcodecs import Zstd

from erase_cli.records import normalise_vector

ROOT = Path(__file__).resolve().parents[1]
ERASE = str(Path(sys.executable).parent / "erase")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
VECTOR_FIELD = "vec"


@dataclass(frozen=True)
class Rec:
    """One record as written to the dataset, with the bytes that must vanish when it is forgotten."""

    id: str
    input: str
    target: str
    vector: list[float]

    def needles(self) -> dict[str, bytes]:
        emb = normalise_vector(self.vector).astype("<f4").tobytes()
        return {"id": self.id.encode(), "input": self.input.encode(), "target": self.target.encode(),
                "embedding": emb}


def make_records(n: int, dim: int = 16, seed: int = 0, prefix: str = "rec") -> list[Rec]:
    """n records in a few well-separated blobs; ids, inputs and targets are unique marker strings
    that never occur inside one another (fixed-width numbers, distinct tags)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim))
    out = []
    for i in range(n):
        v = centres[i % 6] + 0.35 * rng.normal(size=dim)
        out.append(Rec(id=f"{prefix}-{i:06d}-ID", input=f"question marker QIN{i:06d}QX about blob {i % 6}",
                       target=f"answer TGT{i:06d}TX", vector=[float(x) for x in v]))
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


def _views(data: bytes) -> list[bytes]:
    """The file's bytes plus the decompressed content of every zstd frame found in it.

    zarr's Zstd codec writes whole-chunk frames, normally at offset 0; scanning for the magic
    anywhere also catches a frame inside another container (a staged copy, a future layout)."""
    views = [data]
    start = data.find(ZSTD_MAGIC)
    while start >= 0:
        try:
            views.append(bytes(Zstd().decode(data[start:])))
        except Exception:  # noqa: BLE001 - not a real frame, just the magic bytes by chance
            pass
        start = data.find(ZSTD_MAGIC, start + 1)
    return views


def find_bytes(store_dir: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """{needle name: [relative paths whose raw or decompressed bytes contain it]}, only for
    needles found somewhere."""
    store_dir = Path(store_dir)
    hits: dict[str, list[str]] = {}
    for dirpath, _, files in os.walk(store_dir):
        for name in files:
            p = Path(dirpath) / name
            views = _views(p.read_bytes())
            for key, needle in needles.items():
                if any(needle in v for v in views):
                    hits.setdefault(key, []).append(p.relative_to(store_dir).as_posix())
    return hits


def record_needles(records: list[Rec]) -> dict[str, bytes]:
    return {f"{r.id}:{k}": v for r in records for k, v in r.needles().items()}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child `erase`: no ERASE_* from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERASE_")}
    env.update(extra)
    return env


def erase(*args: str, env: dict | None = None, timeout: float = 60, input: str | None = None
          ) -> subprocess.CompletedProcess:
    """Run the real console script; text output captured."""
    return subprocess.run([ERASE, *args], capture_output=True, text=True, env=env or clean_env(),
                          timeout=timeout, input=input)


def erase_popen(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([ERASE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or clean_env())


def build_store(store: Path, records: list[Rec], tmp: Path, *, k: int = 4, dim: int = 8,
                eps: float = 0.1, max_iter: int = 3) -> dict:
    """Ingest `records` (BYO vectors) and fit, through the real CLI; returns the fit report."""
    data = write_jsonl(tmp / f"{store.name}-data.jsonl", records)
    r = erase("ingest", str(data), "--vector-field", VECTOR_FIELD, "--store", str(store))
    assert r.returncode == 0, r.stderr
    r = erase("fit", "-k", str(k), "--dim", str(dim), "--eps", str(eps), "--max-iter", str(max_iter),
              "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def audit_lines(store: Path) -> list[dict]:
    p = Path(store) / "audit.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def refused(args: list[str], store: Path | None, *, code: int = 1, kind: str, mentions: list[str],
            env: dict | None = None) -> str:
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
    assert err["message"] == lines[0][len("error: "):]
    for word in mentions:
        assert word.lower() in err["message"].lower(), (word, err["message"])
    if before is not None:
        assert snapshot(store) == before
    return err["message"]
