"""bench/bytescan.py, the byte scanner that checks erase's stores and the peers' directories: it
finds planted text and float32 vectors in a raw file, inside compressed frames and in the parts of
a SQLite database that a delete leaves behind, and finds nothing that is not there."""

from __future__ import annotations

import bz2
import gzip
import lzma
import sqlite3
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from numcodecs import Zstd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bytescan  # noqa: E402

TEXT = b"N0000042 the deleted note about a lighthouse keeper"
ABSENT_TEXT = b"N0000043 a note that was never written anywhere"


def vector(seed: int) -> bytes:
    v = np.random.default_rng(seed).standard_normal(384).astype("<f4")
    return (v / np.linalg.norm(v)).astype("<f4").tobytes()


PROSE = b"the keeper climbed the stairs and lit the lamp again; " * 80
NEEDLES = {
    ("r42", "text"): TEXT,
    ("r42", "vector"): vector(42),
    ("r43", "text"): ABSENT_TEXT,
    ("r43", "vector"): vector(43),
}


def filler(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def found(report: bytescan.Report) -> dict[tuple[str, str], bool]:
    """{needle: whether a whole copy was found}, for the needles found at all."""
    out: dict[tuple[str, str], bool] = {}
    for h in report.hits:
        out[h.needle] = out.get(h.needle, False) or h.full
    return out


def test_raw_file_at_unaligned_offsets(tmp_path):
    (tmp_path / "a.bin").write_bytes(filler(1001) + TEXT + filler(77, 1) + vector(42) + filler(5000, 2))
    report = bytescan.scan(tmp_path, NEEDLES)
    assert found(report) == {("r42", "text"): True, ("r42", "vector"): True}
    assert {h.view for h in report.hits} == {"raw"}


def test_zstd_chunk_is_seen_through(tmp_path):
    """A zarr chunk as zarr writes it. The text is only in the decoded frame; the vector is found
    there too (zstd may also store incompressible bytes as they are)."""
    chunk = np.frombuffer(PROSE + vector(42) + TEXT + PROSE, dtype=np.uint8)
    (tmp_path / "c" / "0").parent.mkdir()
    (tmp_path / "c" / "0").write_bytes(Zstd(level=3).encode(chunk))
    report = bytescan.scan(tmp_path, NEEDLES)
    assert found(report) == {("r42", "text"): True, ("r42", "vector"): True}
    assert {(h.needle, h.path, h.view) for h in report.hits} >= {
        (("r42", "text"), "c/0", "zstd@0"),
        (("r42", "vector"), "c/0", "zstd@0"),
    }
    assert (("r42", "text"), "raw") not in {(h.needle, h.view) for h in report.hits}


def test_frames_inside_other_bytes_and_nested(tmp_path):
    inner = gzip.compress(PROSE + TEXT)
    (tmp_path / "log").write_bytes(filler(123) + zlib.compress(PROSE[:50] + inner + PROSE) + filler(64))
    report = bytescan.scan(tmp_path, NEEDLES)
    assert found(report) == {("r42", "text"): True}
    assert [h.view for h in report.hits] == ["zlib@123/gzip@50"]  # not in the outer frame's bytes


@pytest.mark.parametrize(
    "compress",
    [gzip.compress, zlib.compress, lzma.compress, bz2.compress],
    ids=["gzip", "zlib", "xz", "bz2"],
)
def test_standard_library_frames(tmp_path, compress):
    (tmp_path / "f").write_bytes(filler(99) + compress(PROSE + TEXT + vector(42) + PROSE) + filler(99, 1))
    report = bytescan.scan(tmp_path, NEEDLES)
    assert found(report) == {("r42", "text"): True, ("r42", "vector"): True}
    assert ("r42", "text") not in {h.needle for h in report.hits if h.view == "raw"}


def test_a_split_vector_is_reported_as_pieces_not_whole(tmp_path):
    v = vector(42)
    (tmp_path / "pages").write_bytes(v[:1024] + filler(4096) + v[1024:])
    (hit,) = bytescan.scan(tmp_path, NEEDLES).hits
    assert hit.needle == ("r42", "vector") and not hit.full and hit.pieces == 1536 // bytescan.PIECE
    assert bytescan.find_bytes(tmp_path, {"v": v}) == {}


def sqlite_with(path, rows: list[tuple[int, bytes, bytes]]) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA secure_delete = OFF")  # the default build's default, said explicitly
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, doc BLOB, emb BLOB)")
    db.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    db.commit()
    return db


def test_sqlite_deleted_rows_stay_in_free_pages_and_free_space(tmp_path):
    """A deleted row's overflow pages go to the freelist; a small deleted row stays in its page's
    free space. Both are found and labelled; live rows are labelled live."""
    big = filler(20000, 4) + vector(42)  # spills into overflow pages
    small = TEXT
    rows = [(1, small, b"x"), (2, b"pad" * 10, big)] + [(i, filler(40, i), b"y") for i in range(3, 30)]
    db = sqlite_with(tmp_path / "db.sqlite", rows)
    live = bytescan.scan(tmp_path, NEEDLES)
    assert found(live) == {("r42", "text"): True, ("r42", "vector"): True}
    where = {h.needle[1]: h.where for h in live.hits}
    assert where == {"text": ["live b-tree cell"], "vector": ["overflow or other page"]}

    db.execute("DELETE FROM t WHERE id IN (1, 2)")
    db.commit()
    db.close()
    gone = bytescan.scan(tmp_path, NEEDLES)
    assert found(gone) == {("r42", "text"): True, ("r42", "vector"): True}
    where = {h.needle[1]: h.where for h in gone.hits}
    assert where == {"text": ["free space in a b-tree page"], "vector": ["free page"]}

    db = sqlite3.connect(tmp_path / "db.sqlite")
    db.execute("VACUUM")  # rewrites the file from the live rows only
    db.close()
    assert bytescan.scan(tmp_path, NEEDLES).hits == []


def test_sqlite_write_ahead_log(tmp_path):
    db = sqlite3.connect(tmp_path / "db.sqlite")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")  # keep the pages in the log, as a busy database does
    db.execute("CREATE TABLE t (doc BLOB)")
    db.execute("INSERT INTO t VALUES (?)", (TEXT,))
    db.commit()
    hits = bytescan.scan(tmp_path, NEEDLES).hits
    db.close()
    assert [(h.path, h.where) for h in hits] == [("db.sqlite-wal", ["write-ahead log"])]


@pytest.mark.parametrize("seed", [0, 1])
def test_indexed_search_agrees_with_plain_search(tmp_path, monkeypatch, seed):
    """The numpy index (used for many needles over large files) and bytes.find give the same hits."""
    rng = np.random.default_rng(seed)
    needles = {(f"r{i}", "vector"): vector(100 + i) for i in range(40)}
    needles |= {(f"r{i}", "text"): f"N{i:07d} text of record {i}".encode() for i in range(40)}
    needles[("short", "id")] = b"r7"  # shorter than the index key: always searched plainly
    parts = [filler(int(rng.integers(0, 3000)), 10 + j) for j in range(30)]
    planted = [needles[(f"r{i}", k)] for i in 1 + rng.choice(39, 12, replace=False) for k in ("vector", "text")]
    planted.append(needles[("r0", "vector")][:700])
    blob = b"".join(p + q for p, q in zip(parts, planted))
    (tmp_path / "big").write_bytes(blob)

    def summary(r):
        return sorted((h.needle, h.offset, h.full, h.pieces) for h in r.hits)

    plain = summary(bytescan.scan(tmp_path, needles))
    monkeypatch.setattr(bytescan, "_SMALL", 0)
    indexed = summary(bytescan.scan(tmp_path, needles))
    assert indexed == plain
    assert len({h[0] for h in plain if h[2]}) == 24 + ("r7" in blob.decode("latin-1"))
    assert (("r0", "vector"), len(blob) - 700, False, 700 // bytescan.PIECE) in plain


def test_find_bytes_names_files_with_whole_copies(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(TEXT)
    (tmp_path / "y").write_bytes(Zstd().encode(np.frombuffer(filler(100) + TEXT, dtype=np.uint8)))
    assert bytescan.find_bytes(tmp_path, {"t": TEXT, "absent": ABSENT_TEXT}) == {"t": ["d/x", "y"]}
