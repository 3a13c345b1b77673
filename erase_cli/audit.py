"""The audit trail (SPEC 5): append-only, hash-chained JSONL, one entry per ingest/fit/forget.

Each entry carries ``seq`` (0, 1, 2, ...), ``time`` (UTC, ISO 8601 with ``Z``), ``action``, the
caller's details, ``prev`` (the previous entry's ``hash``; 64 zeros for the first) and ``hash``,
the sha256 of the canonical JSON (sorted keys, compact) of the entry without ``hash``. Editing an
entry breaks its hash; removing, inserting or reordering entries breaks ``seq`` and ``prev``.
Removing entries from the *end* leaves a valid chain, so the store should remember the hash of
its last entry and pass it to :func:`verify_chain` as ``head``.

The log must never hold a forgotten record's id or text: callers pass :func:`id_hash` values.
:func:`new_entry` refuses the obvious mistakes (a raw-looking ``id_hashes`` item, a detail named
like a record field), not every possible one.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import orjson

from erase_cli.durable import fsync_path
from erase_cli.errors import DiskFull, StoreDamaged, StoreNotWritable

GENESIS = "0" * 64
RESERVED = frozenset({"seq", "time", "action", "prev", "hash"})
# Detail names that would only ever hold a raw id or record text; refusing them turns a careless
# "pass the whole report" into a loud error instead of a privacy leak in an append-only file.
FORBIDDEN_DETAILS = frozenset({"id", "ids", "input", "inputs", "target", "targets", "text", "choices"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TAIL_BLOCK = 4096


def id_hash(secret: bytes, record_id: str) -> str:
    """Keyed hash of a record id (HMAC-SHA256 over its UTF-8 bytes), lowercase hex."""
    return hmac.new(secret, record_id.encode("utf-8"), hashlib.sha256).hexdigest()


def canonical(obj) -> bytes:
    """Sorted-key compact JSON, the form that is hashed and written."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def entry_hash(entry: dict) -> str:
    """sha256 hex of the canonical JSON of ``entry`` without its ``hash`` field."""
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def utc_timestamp(now: datetime | None = None) -> str:
    """``now`` (default: the current time) as UTC ISO 8601 with microseconds and ``Z``."""
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("audit time must be timezone-aware; pass datetime.now(timezone.utc)")
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_entry(prev_entry: dict | None, action: str, details: dict, now: datetime | None = None) -> dict:
    """The entry that follows ``prev_entry`` (None for the first one), with seq, time, prev, hash.

    ``details`` must be JSON values; they are normalised through a JSON round trip so the entry
    equals what :func:`read_entries` gives back and its hash verifies after reading.
    """
    if not isinstance(action, str) or not action:
        raise ValueError("audit action must be a non-empty string")
    clash = RESERVED.intersection(details)
    if clash:
        raise ValueError(f"audit details may not set {sorted(clash)}: they are filled in by the log")
    _refuse_raw_ids(details)
    try:
        body = orjson.loads(orjson.dumps(details, option=orjson.OPT_SERIALIZE_NUMPY))
    except TypeError as exc:
        raise ValueError(f"audit details are not JSON values: {exc}") from None
    if prev_entry is None:
        seq, prev = 0, GENESIS
    else:
        seq, prev = prev_entry["seq"] + 1, prev_entry["hash"]
    body.update(seq=seq, time=utc_timestamp(now), action=action, prev=prev)
    body["hash"] = entry_hash(body)
    return body


def _refuse_raw_ids(details: dict) -> None:
    named = FORBIDDEN_DETAILS.intersection(details)
    if named:
        raise ValueError(
            f"audit details may not contain {sorted(named)}: the log must never hold a record's id "
            "or text; pass id_hash() values as 'id_hashes' and counts instead"
        )
    hashes = details.get("id_hashes", [])
    if not isinstance(hashes, (list, tuple)):
        raise ValueError("audit 'id_hashes' must be a list of id_hash() values")
    for item in hashes:
        if not (isinstance(item, str) and _HEX64.fullmatch(item)):
            raise ValueError(
                "audit 'id_hashes' holds a value that is not an id_hash() digest (64 lowercase hex); "
                "hash ids with audit.id_hash(secret, id) before logging them"
            )


def entry_line(entry: dict) -> bytes:
    """The bytes :func:`append` writes for ``entry``: canonical JSON and a newline."""
    return canonical(entry) + b"\n"


def read_entries(path: str | os.PathLike) -> list[dict]:
    """Every entry of the log at ``path`` in file order; [] when there is no log yet.

    Raises StoreDamaged naming the first line that is not a JSON object.
    """
    numbered, problems = _parse_lines(Path(path))
    if problems:
        raise StoreDamaged(f"{problems[0]}; 'erase log --verify' lists every problem")
    return [entry for _, entry in numbered]


def verify_chain(entries: list[dict], *, head: str | None = None) -> list[str]:
    """Problems with the chain ``entries`` (in file order, as read); [] when it is intact.

    Detects edited entries (hash mismatch), removed ones (missing seq), reordered or duplicated
    ones, a rewritten link (prev mismatch) and a first entry that does not start at the genesis.
    ``head``, the hash the store recorded for its last entry, also detects entries removed from
    or added at the end. Lines are numbered by position, 1-based.
    """
    return _chain_problems(list(enumerate(entries, start=1)), head)


def verify_file(path: str | os.PathLike, *, head: str | None = None) -> list[str]:
    """Like :func:`verify_chain` for the log at ``path``, also reporting lines that do not parse
    (with their real line numbers) instead of stopping at the first one."""
    numbered, problems = _parse_lines(Path(path))
    return problems + _chain_problems(numbered, head)


def _parse_lines(path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], []
    numbered: list[tuple[int, dict]] = []
    problems: list[str] = []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            problems.append(f"audit log {path} line {number} is not valid JSON (truncated or edited)")
            continue
        if not isinstance(entry, dict):
            problems.append(f"audit log {path} line {number} is not a JSON object (edited)")
            continue
        numbered.append((number, entry))
    return numbered, problems


def _chain_problems(numbered: list[tuple[int, dict]], head: str | None) -> list[str]:
    problems: list[str] = []
    chain: list[tuple[int, dict]] = []
    for line, entry in numbered:
        seq = entry.get("seq")
        lacking = sorted(RESERVED.difference(entry))
        if lacking or type(seq) is not int or seq < 0:
            what = f"lacks {lacking}" if lacking else f"has seq {seq!r}"
            problems.append(f"line {line}: not an audit entry, it {what} (edited)")
            continue
        if entry_hash(entry) != entry["hash"]:
            problems.append(
                f"line {line} (seq {seq}, {entry['action']}): edited, its content does not match its hash"
            )
        chain.append((line, entry))
    if not chain:
        if head is not None:
            problems.append(
                f"the audit log has no entries but the store recorded one (hash {head[:12]}...): "
                "the log was deleted or emptied"
            )
        return problems

    first_line = {}
    for line, entry in chain:
        seq = entry["seq"]
        if seq in first_line:
            problems.append(f"line {line}: seq {seq} repeats line {first_line[seq]} (entry duplicated)")
        else:
            first_line[seq] = line
    problems.extend(
        f"{_seq_range(lo, hi)} missing (removed)" for lo, hi in _gaps(sorted(first_line))
    )
    if 0 in first_line:
        genesis = next(entry for line, entry in chain if line == first_line[0])
        if genesis["prev"] != GENESIS:
            problems.append(f"line {first_line[0]} (seq 0): prev is not the genesis value (rewritten)")

    for (line_a, a), (line_b, b) in zip(chain, chain[1:]):
        if b["seq"] < a["seq"]:
            problems.append(
                f"line {line_b} (seq {b['seq']}) comes after line {line_a} (seq {a['seq']}): "
                "entries were reordered"
            )
        elif b["seq"] == a["seq"] + 1 and b["prev"] != a["hash"]:
            problems.append(
                f"line {line_b} (seq {b['seq']}): prev does not match the hash of line {line_a}; "
                "the chain was rewritten (an entry edited and re-hashed, or replaced)"
            )

    if head is not None and chain[-1][1]["hash"] != head:
        line, last = chain[-1]
        recorded = [ln for ln, entry in chain if entry["hash"] == head]
        if recorded:
            problems.append(
                f"line {recorded[-1]} is the store's last recorded entry but line {line} "
                f"(seq {last['seq']}) follows it: entries were added outside erase"
            )
        else:
            problems.append(
                f"the log ends at line {line} (seq {last['seq']}), not at the store's last recorded "
                f"entry (hash {head[:12]}...): entries at the end were removed or replaced"
            )
    return problems


def _gaps(seqs: list[int]) -> list[tuple[int, int]]:
    """Inclusive ranges absent from ``seqs`` (sorted, distinct) between 0 and its maximum."""
    gaps, expected = [], 0
    for seq in seqs:
        if seq > expected:
            gaps.append((expected, seq - 1))
        expected = seq + 1
    return gaps


def _seq_range(lo: int, hi: int) -> str:
    return f"entry seq {lo} is" if lo == hi else f"entries seq {lo}-{hi} are"


def _last_line(fd: int, end: int) -> tuple[int, bytes]:
    """(offset, bytes) of the last line of the file ending at ``end`` (> 0), newline included.

    Reads backwards in growing blocks, so the cost depends on the last line, not on the log.
    """
    pos, buf, step = end, b"", _TAIL_BLOCK
    while True:
        step = min(step, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        # A final newline ends the last line; the one before it starts it.
        cut = buf.rfind(b"\n", 0, len(buf) - 1)
        if cut >= 0:
            return pos + cut + 1, buf[cut + 1 :]
        if pos == 0:
            return 0, buf
        step *= 2


def _tail(fd: int, path: Path) -> tuple[int, dict | None]:
    """The byte offset where the torn tail starts (the file size if none) and the last complete
    entry. A final line without a newline that does not parse is a torn append: it is skipped.
    A final line without a newline that does parse is a complete entry missing only its newline."""
    end = os.fstat(fd).st_size
    valid_end = end
    while valid_end > 0:
        start, raw = _last_line(fd, valid_end)
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            if raw.endswith(b"\n"):
                raise StoreDamaged(
                    f"the last line of audit log {path} is not valid JSON (edited); "
                    "'erase log --verify' shows the problems; restore the log from a backup"
                ) from None
            valid_end = start
            continue
        if not isinstance(entry, dict) or type(entry.get("seq")) is not int or "hash" not in entry:
            raise StoreDamaged(
                f"the last line of audit log {path} is not an audit entry (edited); "
                "'erase log --verify' shows the problems; restore the log from a backup"
            )
        return valid_end, entry
    return 0, None


def last_entry(path: str | os.PathLike) -> dict | None:
    """The log's last complete entry (None without one), read from the end of the file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _tail(fd, path)[1]
    finally:
        os.close(fd)


def contains_tail(path: str | os.PathLike, entry: dict) -> bool:
    """Whether the log's last line is exactly ``entry`` (so appending it again would duplicate it)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        end = os.fstat(fd).st_size
        if end == 0:
            return False
        return _last_line(fd, end)[1].rstrip(b"\n") == canonical(entry)
    finally:
        os.close(fd)


def append(path: str | os.PathLike, entry: dict) -> None:
    """Append ``entry`` (made by :func:`new_entry` from the log's last entry) durably.

    The file is created owner-only. A torn final line left by a crash is dropped first (the store's
    journal re-appends the entry it belonged to); a final entry missing only its newline gets one.
    Raises ValueError when ``entry`` was altered or does not follow the log's last entry.
    """
    path = Path(path)
    if entry_hash(entry) != entry.get("hash"):
        raise ValueError("audit entry was altered after new_entry(): its hash does not match")
    created = not path.exists()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise _write_error(exc, path) from None
    try:
        size = os.fstat(fd).st_size
        valid_end, tail = _tail(fd, path)
        expected = (0, GENESIS) if tail is None else (tail["seq"] + 1, tail["hash"])
        if (entry["seq"], entry["prev"]) != expected:
            raise ValueError(
                f"audit entry seq {entry['seq']} does not follow the last entry of {path} "
                f"(expected seq {expected[0]}); build it with new_entry(last_entry(path), ...)"
            )
        data = entry_line(entry)
        try:
            if valid_end < size:
                os.ftruncate(fd, valid_end)
            elif size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            # Leave no half-written line behind when the disk fills up mid-write.
            try:
                os.ftruncate(fd, min(size, valid_end))
            except OSError:
                pass
            raise _write_error(exc, path) from None
    finally:
        os.close(fd)
    if created:
        fsync_path(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_error(exc: OSError, path: Path) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left to write audit log {path}; free disk space and run the command again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreNotWritable(
            f"cannot write audit log {path} ({exc.strerror}); make the store writable by its owner"
        )
    return exc
