"""Deleting records in erase, LanceDB and Chroma: how long the call takes, how long until the
deleted bytes are gone from the disk (with each system's documented maintenance calls), and
whether a deleted record can still be recovered afterwards.

The same n records go into every system: id, text and a 384-d float32 vector (common.clustered_unit;
precomputed, no embedder runs). Then, on each system in turn, one random id is deleted and then a
batch of 1,000 other random ids. After the delete call and after each maintenance step, the disk
is searched for every deleted record's text and vector bytes (bytescan.py: every file, raw and
decompressed, SQLite free pages and WAL included), and where a format hides bytes from a scan the
system's own API is asked as well:

- erase: `erase forget --from-file` (the CLI, a subprocess: start-up included); no maintenance.
  Built through the store's Transaction API (bench/synthstore.py, what `ingest --vector-field`
  writes) and fitted with `erase fit` at the defaults.
- LanceDB: `table.delete(where)`; then `compact_files()` (Lance's, which LanceDB's deprecated
  `Table.compact_files` calls) + `cleanup_old_versions(older_than=0)` at their defaults, then
  `compact_files(materialize_deletions_threshold=0)` + cleanup again. Also asked: the version before
  the delete (time travel) and the decoded contents of every data file on disk
  (`lance.file.LanceFileReader`), since Lance encodes strings so that a byte scan does not see them.
- Chroma: `collection.delete(ids)`; then `chroma vacuum --force` (its documented maintenance, the
  CLI that ships with chromadb); then, labelled as workarounds, a rebuild into a new collection with
  `delete_collection` of the old one, and removing the old segment directory that it leaves behind.
  Also asked: `collection.get(ids)`.

Timed region: the delete call alone (wall clock; for erase the whole subprocess, spawn to exit,
with its own reported elapsed_ms beside it), and each maintenance call alone. "Gone after" is the
delete call plus the maintenance calls up to the first scan that finds nothing.

Needs the bench extra, in its own virtualenv (bench/README.md):

    /work/peers-venv/bin/python bench/peers.py [--n 100000] [--systems erase lancedb chroma] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import bytescan
import numpy as np
import orjson
import synthstore
from common import CACHE, VENV_BIN, clustered_unit, log, now_utc, rid, write_results

D = 384
BATCH = 1000
WORDS = (
    "harbour lamp keeper stairs north tide ledger invoice parcel river signal copper window "
    "garden orbit ticket meadow cipher lantern violet anchor summit drift ember quarry"
).split()


def text(i: int) -> str:
    """Record i's text: a unique marker first (so its 8-byte key is unique), then seeded words."""
    rng = np.random.default_rng([11, i])
    return f"N{i:07d} " + " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), 9))


def dataset(n: int) -> tuple[list[str], list[str], np.ndarray]:
    vecs = np.concatenate(list(clustered_unit(n, D, seed=synthstore.SEED, chunk=synthstore.SLAB)))
    return [rid(i) for i in range(n)], [text(i) for i in range(n)], vecs


def needles(rows: list[int], texts: list[str], vecs: np.ndarray) -> dict[tuple[str, str], bytes]:
    out = {}
    for r in rows:
        out[(rid(r), "text")] = texts[r].encode()
        out[(rid(r), "vector")] = vecs[r].astype("<f4").tobytes()
    return out


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- the systems


class Erase:
    name = "erase"

    def __init__(self, root: Path):
        self.root = root / "store"
        self.erase = str(VENV_BIN / "erase")

    def build(self, ids, texts, vecs) -> dict:
        t0 = time.perf_counter()
        synthstore.build(self.root, len(ids), text=text)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        fit = self._cli("fit", "--json")
        return {"build_s": built, "fit_s": time.perf_counter() - t0, "fit_elapsed_ms": fit.get("elapsed_ms")}

    def _cli(self, *args: str) -> dict:
        r = subprocess.run([self.erase, *args, "--store", str(self.root)], capture_output=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"erase {args[0]} exited {r.returncode}: {r.stderr.decode()[-2000:]}")
        return orjson.loads(r.stdout)

    def delete(self, ids: list[str]) -> dict:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("".join(i + "\n" for i in ids))
        try:
            with tempfile.TemporaryFile() as out:
                t0 = time.perf_counter()
                proc = subprocess.Popen(
                    [self.erase, "forget", "--json", "--from-file", f.name, "--store", str(self.root)], stdout=out
                )
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t0
                out.seek(0)
                report = orjson.loads(out.read())
        finally:
            os.unlink(f.name)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"erase forget failed: {report}")
        b = report["batch"]
        return {
            "call_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "reported_elapsed_ms": b["elapsed_ms"],
            "action": b["action"],
            "forgotten": sum(i["status"] == "forgotten" for i in report["ids"]),
        }

    def maintenance(self) -> list[tuple[str, object]]:
        return []

    def api_check(self, ids: list[str], rows: list[int]) -> dict:
        """How many of the ids the store's index still returns (every read goes through it)."""
        from erase_cli.store import open_store

        with open_store(self.root, write=False) as st:
            return {"ids_still_returned": int((st.lookup(ids) >= 0).sum())}

    def close(self) -> None:
        pass


class LanceDB:
    name = "lancedb"

    def __init__(self, root: Path):
        import lancedb

        self.root = root / "lancedb"
        self.db = lancedb.connect(str(self.root))
        self.table = None
        self.versions_before: dict[str, int] = {}

    def build(self, ids, texts, vecs) -> dict:
        import pyarrow as pa

        t0 = time.perf_counter()
        data = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "text": pa.array(texts, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), D),
            }
        )
        self.table = self.db.create_table("records", data)
        return {"build_s": time.perf_counter() - t0, "version": self.table.version}

    def delete(self, ids: list[str]) -> dict:
        self.versions_before[ids[0]] = self.table.version
        where = "id IN (" + ", ".join(f"'{i}'" for i in ids) + ")"
        t0 = time.perf_counter()
        self.table.delete(where)
        return {"call_s": time.perf_counter() - t0, "version_after": self.table.version}

    def maintenance(self) -> list[tuple[str, object]]:
        def compact_default():
            self.table.to_lance().optimize.compact_files()
            self.table.checkout_latest()

        def compact_all():
            # Lance rewrites a fragment only when more than materialize_deletions_threshold (default 10%)
            # of its rows are deleted; a handful of deletions in a large fragment are only masked.
            self.table.to_lance().optimize.compact_files(materialize_deletions_threshold=0.0)
            self.table.checkout_latest()

        def cleanup():
            self.table.to_lance().cleanup_old_versions(older_than=dt.timedelta(0), delete_unverified=True)
            self.table.checkout_latest()

        return [
            ("compact_files() (defaults)", compact_default),
            ("cleanup_old_versions(older_than=0)", cleanup),
            ("compact_files(materialize_deletions_threshold=0)", compact_all),
            ("cleanup_old_versions(older_than=0) again", cleanup),
        ]

    def api_check(self, ids: list[str], rows: list[int]) -> dict:
        import lance
        import pyarrow as pa
        import pyarrow.compute as pc
        from lance.file import LanceFileReader

        wanted = set(ids)
        latest = self.table.to_lance()
        live = latest.to_table(columns=["id"], filter="id IN (" + ", ".join(f"'{i}'" for i in ids) + ")")
        out = {"ids_still_returned": live.num_rows}
        before = self.versions_before.get(ids[0])
        try:
            old = lance.dataset(str(self.root / "records.lance"), version=before)
            got = old.to_table(columns=["id", "text"], filter="id IN (" + ", ".join(f"'{i}'" for i in ids) + ")")
            out["previous_version_returns"] = got.num_rows
        except Exception as e:  # noqa: BLE001 - a cleaned-up version is an error by design
            out["previous_version_returns"] = 0
            out["previous_version_error"] = f"{type(e).__name__}: {str(e)[:160]}"
        out["versions"] = len(latest.versions())
        in_files = 0
        files = sorted((self.root / "records.lance" / "data").glob("*.lance"))
        for f in files:
            col = LanceFileReader(str(f), columns=["id"]).read_all().to_table()["id"]
            in_files += int(pc.sum(pc.is_in(col, value_set=pa.array(sorted(wanted)))).as_py() or 0)
        out["rows_decoded_from_data_files"] = in_files
        out["data_files"] = len(files)
        return out

    def close(self) -> None:
        pass


class Chroma:
    name = "chroma"

    def __init__(self, root: Path):
        self.root = root / "chroma"
        self.generation = 0
        self._open("records")

    def _open(self, name: str) -> None:
        import chromadb
        from chromadb.config import Settings

        self.client = chromadb.PersistentClient(path=str(self.root), settings=Settings(anonymized_telemetry=False))
        self.coll = self.client.get_or_create_collection(name, embedding_function=None)
        self.coll_name = name

    def build(self, ids, texts, vecs) -> dict:
        t0 = time.perf_counter()
        step = min(5000, self.client.get_max_batch_size())
        for lo in range(0, len(ids), step):
            self.coll.add(ids=ids[lo : lo + step], documents=texts[lo : lo + step], embeddings=vecs[lo : lo + step])
        return {"build_s": time.perf_counter() - t0, "count": self.coll.count()}

    def delete(self, ids: list[str]) -> dict:
        t0 = time.perf_counter()
        self.coll.delete(ids=ids)
        return {"call_s": time.perf_counter() - t0}

    def _release(self) -> None:
        """Let go of the database so the vacuum can take it (it wants no other user)."""
        from chromadb.api.client import SharedSystemClient

        del self.coll, self.client
        SharedSystemClient.clear_system_cache()

    def maintenance(self) -> list[tuple[str, object]]:
        def vacuum():
            self._release()
            try:
                subprocess.run(
                    [str(VENV_BIN / "chroma"), "vacuum", "--path", str(self.root), "--force"],
                    check=True,
                    capture_output=True,
                    timeout=1800,
                )
            finally:
                self._open(self.coll_name)

        def rebuild():
            """Copy the survivors into a new collection and delete the old one: the only way we know
            to drop deleted vectors from Chroma's HNSW files (no documented call rebuilds an index)."""
            old, self.generation = self.coll_name, self.generation + 1
            new = self.client.create_collection(f"records-{self.generation}", embedding_function=None)
            step = min(5000, self.client.get_max_batch_size())
            for lo in range(0, self.coll.count(), step):
                got = self.coll.get(include=["documents", "embeddings"], limit=step, offset=lo)
                new.add(ids=got["ids"], documents=got["documents"], embeddings=got["embeddings"])
            self.client.delete_collection(old)
            self.coll, self.coll_name = new, new.name

        def remove_orphans():
            """delete_collection leaves the collection's HNSW directory on disk in Chroma 1.x
            (chroma-core/chroma issues 5259 and 5520, open): remove segment directories that the
            database no longer lists."""
            db = sqlite3.connect(f"file:{self.root / 'chroma.sqlite3'}?mode=ro", uri=True)
            try:
                live = {row[0] for row in db.execute("SELECT id FROM segments")}
            finally:
                db.close()
            for d in self.root.iterdir():
                if d.is_dir() and d.name not in live:
                    shutil.rmtree(d)

        return [
            ("chroma vacuum --force", vacuum),
            ("workaround: rebuild into a new collection, delete_collection(old)", rebuild),
            ("workaround: remove the orphaned segment directory by hand", remove_orphans),
        ]

    def api_check(self, ids: list[str], rows: list[int]) -> dict:
        return {"ids_still_returned": len(self.coll.get(ids=ids, include=[])["ids"])}

    def close(self) -> None:
        self._release()


SYSTEMS = {"erase": Erase, "lancedb": LanceDB, "chroma": Chroma}


# --------------------------------------------------------------------------- one run


def scan_state(root: Path, rows: list[int], texts, vecs) -> dict:
    t0 = time.perf_counter()
    report = bytescan.scan(root, needles(rows, texts, vecs))
    return {
        "text_found": len(report.records("text", full_only=True)),
        "vector_found": len(report.records("vector", full_only=True)),
        "vector_pieces_found": len(report.records("vector") - report.records("vector", full_only=True)),
        "records_found": len(report.records()),
        "of": len(rows),
        "places": report.places(),
        "files_with_hits": sorted({h.path for h in report.hits})[:20],
        "where": _where(report),
        "hit_samples": _samples(report),
        "disk_mib": disk_bytes(root) / 2**20,
        "scanned_mib": report.bytes_scanned / 2**20,
        "frames_decoded": report.frames_decoded,
        "scan_s": time.perf_counter() - t0,
    }


def run_system(name: str, work: Path, ids, texts, vecs, cases: dict[str, list[int]]) -> dict:
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    sysm = SYSTEMS[name](root)
    log(f"{name}: building {len(ids)} records")
    out: dict = {"loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    out |= {"build": sysm.build(ids, texts, vecs), "cases": {}}
    every = sorted(r for rows in cases.values() for r in rows)
    out["before"] = scan_state(sysm.root, every, texts, vecs)
    out["disk_mib_built"] = out["before"]["disk_mib"]
    log(f"{name}: built {out['build']}; scan before any delete: {_short(out['before'])}")
    for case, rows in cases.items():
        del_ids = [rid(r) for r in rows]
        res: dict = {"ids": len(rows), "delete": sysm.delete(del_ids)}
        res["after_call"] = {**scan_state(sysm.root, rows, texts, vecs), **sysm.api_check(del_ids, rows)}
        log(f"{name} {case}: delete {res['delete']}; after: {_short(res['after_call'])}")
        steps, elapsed = [], res["delete"]["call_s"]
        gone_s = elapsed if not _recoverable(res["after_call"]) else None
        for step, fn in sysm.maintenance():
            t0 = time.perf_counter()
            fn()
            took = time.perf_counter() - t0
            elapsed += took
            state = {**scan_state(sysm.root, rows, texts, vecs), **sysm.api_check(del_ids, rows)}
            steps.append({"step": step, "s": took, **state})
            log(f"{name} {case}: {step} {took:.2f} s; after: {_short(state)}")
            if gone_s is None and not _recoverable(state):
                gone_s = elapsed
        res["maintenance"] = steps
        res["gone_after_s"] = gone_s
        out["cases"][case] = res
    sysm.close()
    out["disk_mib_end"] = disk_bytes(sysm.root) / 2**20
    out["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def _where(report: bytescan.Report) -> list[str]:
    """Short names of the places holding hits: the file's name (a long generated name shown by its
    extension), and how the bytes were seen (decompressed, or the SQLite page kind)."""
    places: dict[str, set[str]] = {}
    for h in report.hits:
        name = Path(h.path).name
        stem, ext = os.path.splitext(name)
        if len(stem) >= 20:
            name = "*" + ext
        if Path(h.path).parts[:1] == ("records.zarr",):  # erase: say which array
            name = "/".join(Path(h.path).parts[:2]) + " chunks"
        how = h.where or ([] if h.view == "raw" else ["in " + h.view.split("@")[0] + " frames"])
        places.setdefault(name, set()).update(how)
    return [name + (f" ({', '.join(sorted(how))})" if how else "") for name, how in sorted(places.items())]


def _samples(report: bytescan.Report, per_file: int = 2) -> list[dict]:
    """A few hits of each file, as found, for reading the JSON afterwards."""
    out, seen = [], {}
    for h in report.hits:
        if seen.setdefault(h.path, 0) < per_file:
            seen[h.path] += 1
            out.append(
                {
                    "path": h.path,
                    "kind": h.needle[1],
                    "view": h.view,
                    "offset": h.offset,
                    "full": h.full,
                    "pieces": h.pieces,
                    "where": h.where,
                }
            )
    return out


def _recoverable(state: dict) -> bool:
    return bool(
        state["records_found"]
        or state.get("ids_still_returned")
        or state.get("previous_version_returns")
        or state.get("rows_decoded_from_data_files")
    )


def _short(s: dict) -> str:
    keys = ("text_found", "vector_found", "vector_pieces_found", "of", "ids_still_returned")
    keys += ("previous_version_returns", "rows_decoded_from_data_files", "scan_s")
    return ", ".join(f"{k}={s[k]:.3g}" if isinstance(s[k], float) else f"{k}={s[k]}" for k in keys if k in s)


# --------------------------------------------------------------------------- report


def _found_cell(s: dict) -> str:
    parts = [f"text {s['text_found']}/{s['of']}", f"vector {s['vector_found']}/{s['of']}"]
    if s["vector_pieces_found"]:
        parts.append(f"+{s['vector_pieces_found']} partial")
    if s["where"]:
        parts.append("in " + "; ".join(s["where"]))
    return ", ".join(parts)


def _api_cell(s: dict) -> str:
    parts = []
    if s.get("ids_still_returned"):
        parts.append(f"get/lookup returns {s['ids_still_returned']}")
    if "previous_version_returns" in s:
        parts.append(f"previous version returns {s['previous_version_returns']}")
    if "rows_decoded_from_data_files" in s:
        parts.append(f"rows in data files {s['rows_decoded_from_data_files']}")
    return "; ".join(parts) or "none"


def table_rows(results: dict) -> list[list]:
    rows = []
    for name, r in results.items():
        for case, c in r["cases"].items():
            d = c["delete"]
            call = "after the call"
            if "action" in d:
                inner = d["reported_elapsed_ms"] / 1000
                call += f" (forget action {d['action']}, {inner:.2f} s in-process, CPU {d['cpu_s']:.2f} s)"
            states = [(call, d["call_s"], c["after_call"])]
            states += [(f"after {m['step']}", m["s"], m) for m in c["maintenance"]]
            for label, secs, s in states:
                rows.append(
                    [
                        name,
                        case,
                        label,
                        secs,
                        _found_cell(s),
                        _api_cell(s),
                        "yes" if _recoverable(s) else "no",
                        s["disk_mib"],
                    ]
                )
            rows.append(
                [name, case, "**gone after (s)**", c["gone_after_s"] or "never (within this run)", "", "", "", ""]
            )
    return rows


def reading(results: dict, n: int, batch: int) -> list[str]:
    """A short reading of the run, its numbers taken from the results."""
    out = []

    def case(name: str) -> list[tuple[str, dict]]:
        return list(results[name]["cases"].items()) if name in results else []

    def gone(c: dict) -> str:
        return f"{c['gone_after_s']:.2f} s" if c["gone_after_s"] is not None else "never"

    if "erase" in results:
        parts = [
            f"{k}: {c['delete']['call_s']:.2f} s wall ({c['delete']['reported_elapsed_ms'] / 1000:.2f} s "
            f"in-process, forget action {c['delete']['action']})"
            for k, c in case("erase")
        ]
        out.append(
            "erase: the forget call is the deletion. When it returned ("
            + "; ".join(parts)
            + "), no byte of any deleted record was found and its index no longer returned the ids; there is "
            "no maintenance to run. The wall time includes the CLI's start-up (about 0.5-0.8 s here)."
        )
    if "lancedb" in results:
        cs = case("lancedb")
        calls = " / ".join(f"{c['delete']['call_s'] * 1000:.0f} ms" for _, c in cs)
        kept = all(c["after_call"]["vector_found"] == c["ids"] for _, c in cs)
        prev = all(c["after_call"].get("previous_version_returns") == c["ids"] for _, c in cs)
        default_kept = all(c["maintenance"][1]["rows_decoded_from_data_files"] == c["ids"] for _, c in cs)
        rewrite = " / ".join(f"{c['maintenance'][2]['s']:.2f} s" for _, c in cs)
        out.append(
            f"LanceDB: delete returned in {calls} (1 id / batch) and only marks rows deleted: "
            + ("every deleted vector stayed in the data file" if kept else "some deleted vectors stayed")
            + (" and the version before the delete still returned every deleted row (time travel)" if prev else "")
            + (
                ". compact_files() at its defaults rewrote nothing, so after cleanup_old_versions(older_than=0) "
                "time travel was gone but the rows were still in "
                "the data file (Lance rewrites a fragment only when more than materialize_deletions_threshold, "
                "10% by default, of its rows are deleted; "
                f"1 and {batch:,} of {n:,} are below it)"
                if default_kept
                else ". compact_files() at its defaults rewrote some fragments"
            )
            + f". compact_files(materialize_deletions_threshold=0) rewrote the file ({rewrite}) and, after a "
            f"second cleanup, the bytes were gone: after {' / '.join(gone(c) for _, c in cs)} in all. The byte "
            "scan never sees LanceDB's text (its strings are encoded, not stored as plain bytes or standard "
            "compressed frames); reading the data files with lance.file.LanceFileReader does, and agrees with "
            "the vector scan at every step."
        )
    if "chroma" in results:
        cs = case("chroma")
        calls = " / ".join(f"{c['delete']['call_s'] * 1000:.0f} ms" for _, c in cs)
        vac = " / ".join(f"{c['maintenance'][0]['s']:.1f} s" for _, c in cs)
        reb = " / ".join(f"{c['maintenance'][1]['s']:.0f} s" for _, c in cs)
        files: dict[str, set[str]] = {}
        for _, c in cs:  # "chroma.sqlite3 (free page)" and "chroma.sqlite3 (free space ...)" -> one entry
            for w in c["after_call"]["where"]:
                name, _, how = w.partition(" (")
                files.setdefault(name, set()).update(x for x in how.rstrip(")").split(", ") if x)
        where = [f + (f" ({', '.join(sorted(h))})" if h else "") for f, h in sorted(files.items())]
        out.append(
            f"Chroma: delete returned in {calls}; the deleted records stayed on disk ({'; '.join(where)}). "
            f"chroma vacuum ({vac}) removed the text from SQLite, but the vectors stay in the HNSW index file "
            "(data_level0.bin), which no maintenance call rebuilds. The workaround measured here, copying the "
            f"survivors into a new collection and deleting the old one ({reb}), still leaves the old index "
            "directory on disk (delete_collection does not remove it in Chroma 1.x: chroma-core/chroma issues "
            f"5259 and 5520); removing it by hand finally cleared the disk: gone after "
            f"{' / '.join(gone(c) for _, c in cs)}."
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="n = 5,000 and a batch of 100 (a smoke run)")
    ap.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--keep", action="store_true", help="keep the systems' directories under bench/.cache/peers")
    args = ap.parse_args()
    started = now_utc()
    n, batch = (5000, 100) if args.quick else (args.n, BATCH)
    rng = np.random.default_rng([5, n])
    pick = rng.permutation(n)[: 1 + batch]
    cases = {"1 id": [int(pick[0])], f"{batch} ids": sorted(int(r) for r in pick[1:])}
    log(f"generating {n} records")
    ids, texts, vecs = dataset(n)
    work = CACHE / "peers"
    results = {}
    versions = _versions()
    for name in args.systems:
        results[name] = run_system(name, work, ids, texts, vecs, cases)
        if not args.keep:
            shutil.rmtree(work / name, ignore_errors=True)
    summary = (
        f"Deleting 1 and {batch} random ids from the same {n} records (text + 384-d float32 vector) in "
        f"{', '.join(f'{k} {v}' for k, v in versions.items() if k in args.systems or k == 'erase')}. "
        "'found' = whole copies of the deleted records' text / vector bytes anywhere on disk (raw or "
        "decompressed; 'partial' = only 64-byte pieces of the vector); 'API' = what the system's own "
        "interface still returns; 'recoverable' = either."
    )
    write_results(
        "peers",
        summary=summary,
        timed_region=(
            "the delete call alone (erase: the whole `erase forget` subprocess, start-up included) and each "
            "maintenance call alone, wall clock; scans and API checks are not timed; 'gone after' adds the "
            "call and the maintenance calls up to the first state where nothing is recoverable"
        ),
        results={"n": n, "batch": batch, "versions": versions, "cases": cases, "systems": results},
        header=["system", "deleted", "state", "s", "found on disk", "API", "recoverable", "disk MiB"],
        table=table_rows(results),
        notes=reading(results, n, batch)
        + [
            "Same machine, one system after another; load average (1, 5, 15 min) at each system's start: "
            + "; ".join(f"{k} {v['loadavg_at_start']}" for k, v in results.items())
            + ".",
            "No vector index (IVF/HNSW) was built in LanceDB; Chroma always builds HNSW. erase's store was built "
            "through its Transaction API (bench/synthstore.py) and fitted with `erase fit` at the defaults.",
            "Scans: bench/bytescan.py over every file of the system's directory (zstd, gzip, zlib, lz4, xz, "
            "bzip2 frames decoded; SQLite free pages, free space in pages and WAL included).",
        ],
        started=started,
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg, key in (("erase-cli", "erase"), ("lancedb", "lancedb"), ("pylance", "lance"), ("chromadb", "chroma")):
        try:
            out[key] = version(pkg)
        except PackageNotFoundError:
            out[key] = "not installed"
    return out


if __name__ == "__main__":
    main()
