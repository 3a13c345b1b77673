"""Look for records' bytes in every file under a directory, the way someone holding the disk would.

Each file is searched as it is and inside every compressed frame found in it (zstd, gzip, zlib,
lz4 frame, xz, bzip2; a frame counts only if it decodes to its end), so zarr's zstd chunks,
compressed pages and logs are seen through. SQLite files are searched whole, which covers free
pages, deleted cells left in a page's free space and the write-ahead log (-wal, another file);
each hit in a database file is then labelled with the kind of page that holds it, so a report can
tell a deleted-but-present record from a live one. What a format encodes rather than compresses
(dictionary or FSST strings, bit-packing) stays invisible here: check such formats with their own
reader as well.

A needle is a (record, kind) -> bytes pair. Long needles (a 384-d float32 vector is 1,536 bytes)
are also searched as 64-byte pieces, so a vector split across pages or half overwritten is still
reported ("pieces"), apart from a whole copy ("full").

Many needles over large files: a needle is first located by an 8-byte key at each of the 8
alignments of the file through a one-byte-per-bucket filter over hashed keys (numpy; about 150 MB
in 4-7 s on the shared 2-core machine, frames included), then confirmed byte for byte; small jobs
use bytes.find. Both give the same hits (tests/test_bytescan.py checks that they agree).

Used by bench/peers.py on erase's store and on LanceDB's and Chroma's directories, and by the
tests (tests/helpers.py) to check that a forgotten record's bytes are gone.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

PIECE = 64  # bytes: 16 float32; long enough to be unique to one vector, short enough to survive a page split
KEY = 8  # bytes of each piece used to locate it
MAX_OUT = 1 << 30  # a frame that decompresses to more than this is cut there (a bomb or a huge log)
MAX_DEPTH = 2  # frames inside frames (a compressed page inside a compressed log), then stop
_SMALL = 1 << 16  # below this many (file bytes x needles / 64 KiB), plain bytes.find is faster

# Magic bytes of the frame formats that can be decoded from the standard library, numcodecs or
# the optional zstandard / lz4 packages. zlib's 2-byte headers also occur by chance in random
# data; such false starts fail to decode to an end and are dropped.
_ZSTD = b"\x28\xb5\x2f\xfd"
_GZIP = b"\x1f\x8b\x08"
_LZ4F = b"\x04\x22\x4d\x18"
_XZ = b"\xfd7zXZ\x00"
_BZ2 = b"BZh"
_ZLIB = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")


@dataclass
class Hit:
    """Where one needle was found in one view of one file.

    view: "raw" or the chain of frames it was decoded from ("zstd@0", "gzip@512/zlib@80");
    full: a whole copy of the needle is there (else only some of its 64-byte pieces);
    pieces: how many pieces matched; offset: the first match; where: for hits in the raw bytes
    of a SQLite database or its WAL, what holds them ("free page", "free space in a b-tree page",
    "live b-tree cell", "overflow or other page", "write-ahead log").
    """

    path: str
    needle: tuple[str, str]
    view: str
    offset: int
    full: bool = False
    pieces: int = 0
    where: list[str] = field(default_factory=list)


@dataclass
class Report:
    hits: list[Hit] = field(default_factory=list)
    files: int = 0
    bytes_scanned: int = 0
    frames_decoded: int = 0

    def records(self, kind: str | None = None, *, full_only: bool = False) -> set[str]:
        """Records with a needle (of `kind`) found somewhere."""
        return {h.needle[0] for h in self.hits if (kind is None or h.needle[1] == kind) and (h.full or not full_only)}

    def places(self) -> dict[str, int]:
        """{"<file kind> / <view kind> / <where>": hits}, a summary of where bytes were found."""
        out: dict[str, int] = {}
        for h in self.hits:
            view = "raw" if h.view == "raw" else "decompressed " + h.view.split("@")[0]
            for where in h.where or [""]:
                key = " / ".join(x for x in (view, where) if x)
                out[key] = out.get(key, 0) + 1
        return out


# --------------------------------------------------------------------------- decompressed views


def _feed(d, buf: memoryview, errors) -> bytes | None:
    """Decode one frame from the start of buf with decompressor d, fed 64 KiB at a time: the frame's
    bytes if it ends inside buf, else None. Feeding in slices matters: a false start (magic bytes
    that occur by chance) is given up after its first slice, and no decoder ever copies the rest of
    a large file as unconsumed input."""
    out, size = [], 0
    for lo in range(0, len(buf), 1 << 16):
        try:
            piece = d.decompress(buf[lo : lo + (1 << 16)])
        except errors:
            return None
        out.append(piece)
        size += len(piece)
        if d.eof:
            return b"".join(out)
        if size > MAX_OUT:
            return None
    return None


def _zstd_frame(buf: memoryview) -> bytes | None:
    try:
        import zstandard
    except ImportError:
        zstandard = None
    if zstandard is not None:
        return _feed(zstandard.ZstdDecompressor().decompressobj(), buf, zstandard.ZstdError)
    try:  # numcodecs (zarr's own dependency) decodes frames that record their size, as zarr writes them
        from numcodecs import Zstd

        return bytes(Zstd().decode(buf))
    except Exception:  # noqa: BLE001 - not a frame it can decode
        return None


def _lz4_frame(buf: memoryview) -> bytes | None:
    try:
        import lz4.frame
    except ImportError:
        return None
    return _feed(lz4.frame.LZ4FrameDecompressor(), buf, RuntimeError)


_DECODERS = {
    "zstd": _zstd_frame,
    "lz4": _lz4_frame,
    "gzip": lambda b: _feed(zlib.decompressobj(31), b, zlib.error),
    "zlib": lambda b: _feed(zlib.decompressobj(), b, zlib.error),
    "xz": lambda b: _feed(lzma.LZMADecompressor(), b, lzma.LZMAError),
    "bz2": lambda b: _feed(bz2.BZ2Decompressor(), b, (OSError, ValueError, EOFError)),
}
_MAGICS = [("zstd", _ZSTD), ("gzip", _GZIP), ("lz4", _LZ4F), ("xz", _XZ), ("bz2", _BZ2)] + [("zlib", m) for m in _ZLIB]


def _frames(data: bytes) -> Iterator[tuple[str, int, bytes]]:
    """(format, offset, decoded bytes) of every complete compressed frame that starts in data."""
    mv = memoryview(data)
    for fmt, magic in _MAGICS:
        start = data.find(magic)
        while start >= 0:
            out = _DECODERS[fmt](mv[start:])
            if out:
                yield fmt, start, out
            start = data.find(magic, start + 1)


def views(data: bytes, *, depth: int = MAX_DEPTH) -> Iterator[tuple[str, bytes]]:
    """("raw", data) and (frame chain, decoded bytes) for every frame in it, recursively to `depth`."""
    yield "raw", data
    if depth <= 0:
        return
    for fmt, off, out in _frames(data):
        for name, inner in views(out, depth=depth - 1):
            yield f"{fmt}@{off}" + ("" if name == "raw" else "/" + name), inner


# --------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class _Piece:
    needle: tuple[str, str]
    start: int  # where the piece starts inside its needle
    data: bytes
    whole: bytes


def _pieces(needles: Mapping[tuple[str, str], bytes]) -> list[_Piece]:
    out = []
    for key, data in needles.items():
        if len(data) <= 2 * PIECE:
            out.append(_Piece(key, 0, data, data))
            continue
        for start in range(0, len(data) - PIECE + 1, PIECE):
            out.append(_Piece(key, start, data[start : start + PIECE], data))
    return out


def _matches_small(buf: bytes, pieces: list[_Piece]) -> Iterator[tuple[_Piece, int]]:
    for p in pieces:
        at = buf.find(p.data)
        while at >= 0:
            yield p, at
            at = buf.find(p.data, at + 1)


class _Index:
    """The pieces' 8-byte keys hashed into 2^24 one-byte buckets, to locate them all in one pass."""

    BITS = 24
    MUL = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of key * an odd constant

    def __init__(self, pieces: list[_Piece]):
        self.pieces = pieces
        keys = np.frombuffer(b"".join(p.data[:KEY] for p in pieces), dtype="<u8")
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]
        self.bucket = np.zeros(1 << self.BITS, dtype=bool)
        self.bucket[self._hash(keys)] = True

    def _hash(self, w: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (w * self.MUL) >> np.uint64(64 - self.BITS)

    def matches(self, buf: bytes) -> Iterator[tuple[_Piece, int]]:
        arr = np.frombuffer(buf, dtype=np.uint8)
        step = 1 << 23  # words per block: bounds the temporaries at about 200 MB
        for align in range(KEY):
            n_words = (len(arr) - align) // KEY
            for lo in range(0, n_words, step):
                hi = min(lo + step, n_words)
                w = arr[align + lo * KEY : align + hi * KEY].view("<u8")
                cand = np.flatnonzero(self.bucket[self._hash(w)])
                if not len(cand):
                    continue
                wc = w[cand]
                first = np.searchsorted(self.keys, wc, side="left")
                last = np.searchsorted(self.keys, wc, side="right")
                for c, a, b in zip(cand[first < last], first[first < last], last[first < last]):
                    off = align + (lo + int(c)) * KEY
                    for j in range(a, b):
                        p = self.pieces[self.order[j]]
                        if buf[off : off + len(p.data)] == p.data:
                            yield p, off


def _search(buf: bytes, pieces: list[_Piece], index: _Index | None = None) -> Iterator[tuple[_Piece, int, bool]]:
    """(piece, offset, whether the whole needle is there around it)."""
    found = index.matches(buf) if index is not None else _matches_small(buf, pieces)
    for p, off in found:
        at = off - p.start
        yield p, off, at >= 0 and buf[at : at + len(p.whole)] == p.whole


# --------------------------------------------------------------------------- SQLite pages


def _u16(b, i: int) -> int:
    return int.from_bytes(b[i : i + 2], "big")


def _u32(b, i: int) -> int:
    return int.from_bytes(b[i : i + 4], "big")


class _SQLitePages:
    """Says what holds a byte offset of a SQLite database file (file format: sqlite.org/fileformat2.html)."""

    def __init__(self, data):
        size = _u16(data, 16)
        self.page_size = 65536 if size == 1 else size
        self.data = data
        self.free: set[int] = set()
        trunk, seen = _u32(data, 32), 0
        while trunk and seen < 1 << 24:  # the freelist: trunk pages, each listing leaf pages
            base = (trunk - 1) * self.page_size
            if base + 8 > len(data):
                break
            self.free.add(trunk)
            n_leaves = _u32(data, base + 4)
            self.free.update(_u32(data, base + 8 + 4 * i) for i in range(min(n_leaves, self.page_size // 4 - 2)))
            trunk, seen = _u32(data, base), seen + 1

    def where(self, offset: int) -> str:
        page = offset // self.page_size + 1
        if page in self.free:
            return "free page"
        base = (page - 1) * self.page_size
        hdr = base + (100 if page == 1 else 0)
        kind = self.data[hdr]
        if kind not in (2, 5, 10, 13):
            return "overflow or other page"
        cells = _u16(self.data, hdr + 3)
        content = _u16(self.data, hdr + 5) or 65536
        array_end = hdr + (8 if kind in (10, 13) else 12) + 2 * cells
        x = offset - base
        if array_end - base <= x < content:
            return "free space in a b-tree page"
        block, hops = _u16(self.data, hdr + 1), 0
        while block and hops < self.page_size:  # freeblocks: deleted cells chained inside the page
            if block <= x < block + _u16(self.data, base + block + 2):
                return "free space in a b-tree page"
            block, hops = _u16(self.data, base + block), hops + 1
        return "live b-tree cell"


def _is_sqlite(data) -> bool:
    return bytes(data[:16]) == b"SQLite format 3\x00" and len(data) >= 100


def _is_wal(data) -> bool:
    return len(data) >= 32 and _u32(data, 0) in (0x377F0682, 0x377F0683)


# --------------------------------------------------------------------------- entry points


def scan(root: str | Path, needles: Mapping[tuple[str, str], bytes]) -> Report:
    """Every hit of every needle in every regular file under root (a file or a directory)."""
    root = Path(root)
    pieces = _pieces(needles)
    long = [p for p in pieces if len(p.data) >= KEY]
    index = _Index(long) if long else None
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    report = Report()
    for path in files:
        rel = path.name if path == root else path.relative_to(root).as_posix()
        size = path.stat().st_size
        if size == 0:
            continue
        report.files += 1
        _scan_file(rel, path.read_bytes(), pieces, index, report)
    return report


def _scan_file(rel: str, data: bytes, pieces: list[_Piece], index: _Index | None, report: Report) -> None:
    pages = _SQLitePages(data) if _is_sqlite(data) else None
    wal = _is_wal(data)
    for name, buf in views(data):
        report.bytes_scanned += len(buf)
        report.frames_decoded += name != "raw"
        hits: dict[tuple[str, str], Hit] = {}
        if index is not None and len(buf) * len(index.pieces) > _SMALL * 64:
            found = chain(_search(buf, index.pieces, index), _search(buf, [p for p in pieces if len(p.data) < KEY]))
        else:
            found = _search(buf, pieces)
        for p, off, full in found:
            h = hits.setdefault(p.needle, Hit(rel, p.needle, name, off))
            h.offset = min(h.offset, off)
            h.full |= full
            h.pieces += 1
            where = "write-ahead log" if wal and name == "raw" else pages.where(off) if pages and name == "raw" else ""
            if where and where not in h.where:
                h.where.append(where)
        report.hits += hits.values()


def find_bytes(root: str | Path, needles: Mapping[str, bytes]) -> dict[str, list[str]]:
    """{needle name: [relative paths whose raw or decompressed bytes hold the whole needle]}, for
    the needles found somewhere (what the tests ask after a forget)."""
    report = scan(root, {(name, ""): data for name, data in needles.items()})
    hits: dict[str, set[str]] = {}
    for h in report.hits:
        if h.full:
            hits.setdefault(h.needle[0], set()).add(h.path)
    return {k: sorted(v) for k, v in hits.items()}
