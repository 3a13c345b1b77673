"""The audit trail (SPEC 5): append-only, hash-chained JSONL, one entry per ingest/fit/forget/upgrade/export.

Each entry carries ``seq`` (0, 1, 2, ...), ``time`` (UTC, ISO 8601 with ``Z``), ``action``, the
caller's details, ``prev`` (the previous entry's ``hash``; 64 zeros for the first) and ``hash``.
Editing an entry breaks its hash; removing, inserting or reordering entries breaks ``seq`` and
``prev``. Removing entries from the *end* leaves a valid chain, so the store remembers the hash
of its last entry and passes it to :func:`verify_chain` as ``head``; an operator who wrote down an
entry's hash elsewhere can pass it as ``expect_head`` to prove the history up to it is intact.

The chain is keyed: ``hash`` is HMAC-SHA256 with the store's secret over the canonical JSON
(sorted keys, compact) of the entry without ``hash``. A plain sha256 chain proves nothing
against someone who can write the file: they delete a forget entry and re-hash everything after
it. Without the key they cannot make hashes that verify. Stores written before the key was used
hold plain-sha256 entries (``key=None``); a store upgraded in place keeps that history and keys
every entry from ``keyed_from`` (the seq of its first keyed entry) on, so verification checks
entries below ``keyed_from`` with sha256 and the rest with the key. ``keyed_from`` itself must be
kept where the log's writer cannot lower it, or the keyed section can be declared legacy.

Writers never restart or shorten a log: :func:`check_head` refuses a log that is missing, cut,
extended or torn where the store recorded history, and :func:`append` drops a torn last line only
when it is the start of the very entry being appended (a crash cut that append). The log is never
opened through a symbolic link.

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
import stat
from datetime import UTC, datetime
from pathlib import Path

import orjson

from erase_cli.durable import fsync_path
from erase_cli.errors import DiskFull, InvalidParameter, StoreDamaged, StoreNotWritable

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


def entry_hash(entry: dict, key: bytes | None = None) -> str:
    """Hex digest of the canonical JSON of ``entry`` without its ``hash`` field: HMAC-SHA256
    with ``key``, so only the store's owner can make hashes that verify; plain sha256 when
    ``key`` is None (entries written before the store keyed its chain)."""
    body = canonical({name: value for name, value in entry.items() if name != "hash"})
    if key is None:
        return hashlib.sha256(body).hexdigest()
    if not key:
        # An empty HMAC key is public knowledge: the chain would be as forgeable as plain sha256.
        raise ValueError("audit key is empty; pass the store's secret (or None for a legacy chain)")
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def utc_timestamp(now: datetime | None = None) -> str:
    """``now`` (default: the current time) as UTC ISO 8601 with microseconds and ``Z``."""
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("audit time must be timezone-aware; pass datetime.now(timezone.utc)")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_entry(
    prev_entry: dict | None,
    action: str,
    details: dict,
    now: datetime | None = None,
    *,
    key: bytes | None = None,
) -> dict:
    """The entry that follows ``prev_entry`` (None for the first one), with seq, time, prev, hash.

    ``key`` is the store's secret: the hash is keyed with it (see :func:`entry_hash`); None
    only for a store whose chain is not keyed yet.

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
    body["hash"] = entry_hash(body, key)
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
    path = Path(path)
    try:
        fd = _open(path, os.O_RDONLY)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    entries = []
    for number, raw in enumerate(lines, start=1):
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise StoreDamaged(
                f"audit log {path} line {number} is not valid JSON (truncated or edited); "
                "restore the store from a backup"
            ) from None
        if not isinstance(entry, dict):
            raise StoreDamaged(
                f"audit log {path} line {number} is not a JSON object (edited); restore the store from a backup"
            )
        entries.append(entry)
    return entries


def verify_chain(
    entries: list[dict],
    *,
    head: str | None = None,
    key: bytes | None = None,
    keyed_from: int = 0,
    expect_head: str | None = None,
) -> list[str]:
    """Problems with the chain ``entries`` (in file order, as read); [] when it is intact.

    Detects edited entries (hash mismatch), removed ones (missing seq), reordered or duplicated
    ones, a rewritten link (prev mismatch) and a first entry that does not start at the genesis.
    With ``key``, entries from seq ``keyed_from`` on must carry the keyed hash, which is what
    catches a chain re-hashed by someone without the key; earlier entries (and all of them when
    ``key`` is None) are checked with plain sha256. ``head``, the hash the store recorded for its
    last entry, also detects entries removed from or added at the end. ``expect_head``, a hash
    recorded earlier outside the store, must belong to some entry. Lines are numbered by
    position, 1-based.
    """
    return _chain_problems(list(enumerate(entries, start=1)), head, key, keyed_from, expect_head)


def _open(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` of the log that never follows a symbolic link and only opens a regular file.

    A link named audit.jsonl could point the append-only log at any file the user can write, or
    let someone swap the history under the store; a store never contains links, so one is damage.
    O_NONBLOCK keeps a FIFO put in the log's place from hanging the open; it changes nothing for
    a regular file. Raises FileNotFoundError as os.open does when there is no log.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreDamaged(
                f"audit log {path} is a symbolic link; erase never follows links inside a store: "
                "replace it with the real file from a backup"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreDamaged(f"audit log {path} is not a regular file; replace it with the real file from a backup")
    return fd


def _chain_problems(
    numbered: list[tuple[int, dict]],
    head: str | None,
    key: bytes | None,
    keyed_from: int,
    expect_head: str | None,
) -> list[str]:
    if type(keyed_from) is not int or keyed_from < 0:
        raise ValueError(f"keyed_from must be a seq (an int >= 0), not {keyed_from!r}")
    if expect_head is not None and not (isinstance(expect_head, str) and _HEX64.fullmatch(expect_head)):
        raise InvalidParameter(
            f"expected head {expect_head!r} is not an audit entry hash; "
            "pass the full 64-character lowercase hex 'hash' of the entry you recorded"
        )
    problems: list[str] = []
    chain: list[tuple[int, dict]] = []
    for line, entry in numbered:
        seq = entry.get("seq")
        lacking = sorted(RESERVED.difference(entry))
        if lacking or type(seq) is not int or seq < 0:
            what = f"lacks {lacking}" if lacking else f"has seq {seq!r}"
            problems.append(f"line {line}: not an audit entry, it {what} (edited)")
            continue
        if key is not None and seq >= keyed_from:
            if entry_hash(entry, key) != entry["hash"]:
                problems.append(
                    f"line {line} (seq {seq}, {entry['action']}): does not match its keyed hash: "
                    "edited or re-hashed without the store key"
                )
        elif entry_hash(entry) != entry["hash"]:
            problems.append(f"line {line} (seq {seq}, {entry['action']}): edited, its content does not match its hash")
        chain.append((line, entry))
    if expect_head is not None and not any(entry["hash"] == expect_head for _, entry in chain):
        problems.append(
            f"no entry has the hash recorded earlier ({expect_head[:12]}...): the history up to "
            "that recorded entry was rewritten or removed"
        )
    if not chain:
        if head is not None:
            problems.append(
                f"the audit log has no entries but the store recorded one (hash {head[:12]}...): "
                "the log was deleted or emptied"
            )
        return problems

    first_line: dict[int, int] = {}
    for line, entry in chain:
        seq = entry["seq"]
        if seq in first_line:
            problems.append(f"line {line}: seq {seq} repeats line {first_line[seq]} (entry duplicated)")
        else:
            first_line[seq] = line
    problems.extend(f"{_seq_range(lo, hi)} missing (removed)" for lo, hi in _gaps(sorted(first_line)))
    if 0 in first_line:
        genesis = next(entry for line, entry in chain if line == first_line[0])
        if genesis["prev"] != GENESIS:
            problems.append(f"line {first_line[0]} (seq 0): prev is not the genesis value (rewritten)")

    for (line_a, a), (line_b, b) in zip(chain, chain[1:]):
        if b["seq"] < a["seq"]:
            problems.append(
                f"line {line_b} (seq {b['seq']}) comes after line {line_a} (seq {a['seq']}): entries were reordered"
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


def _fix(path: Path) -> str:
    return f"restore {path.name} from a backup; 'erase log --verify' shows the problems"


def _torn_line(fd: int, size: int) -> tuple[int, bytes]:
    """(offset, bytes) of a final line that lacks its newline; (size, b"") when there is none."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size, b""
    return _last_line(fd, size)


def _decode(raw: bytes, path: Path) -> dict | None:
    """The entry on line ``raw``; None when it is not valid JSON (the caller decides whether that
    is a torn append or damage). Raises StoreDamaged for JSON that is not an audit entry."""
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entry, dict) or type(entry.get("seq")) is not int or "hash" not in entry:
        raise StoreDamaged(f"the last line of audit log {path} is not an audit entry (edited); {_fix(path)}")
    return entry


def _entry_ending_at(fd: int, path: Path, end: int) -> dict | None:
    """The entry on the complete line that ends at ``end`` (just past its newline); None at 0."""
    if end == 0:
        return None
    entry = _decode(_last_line(fd, end)[1], path)
    if entry is None:
        raise StoreDamaged(f"the last line of audit log {path} is not valid JSON (edited); {_fix(path)}")
    return entry


def _tail(fd: int, path: Path) -> dict | None:
    """The last complete entry, for readers. A final line without a newline that does not parse
    is a torn append: it is skipped (whether it may stay is for :func:`check_head` and
    :func:`append` to decide). One that does parse is a complete entry missing only its newline."""
    start, torn = _torn_line(fd, os.fstat(fd).st_size)
    if torn:
        entry = _decode(torn, path)
        if entry is not None:
            return entry
    return _entry_ending_at(fd, path, start)


def last_entry(path: str | os.PathLike) -> dict | None:
    """The log's last complete entry (None without one), read from the end of the file."""
    path = Path(path)
    try:
        fd = _open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _tail(fd, path)
    finally:
        os.close(fd)


def contains_tail(path: str | os.PathLike, entry: dict) -> bool:
    """Whether the log's last line is exactly ``entry``, newline included (so appending it again
    would duplicate it). Without its newline the entry is not complete: :func:`check_head` would
    refuse the log, and :func:`append` of the same entry rewrites the line whole."""
    path = Path(path)
    try:
        fd = _open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        end = os.fstat(fd).st_size
        if end == 0:
            return False
        return _last_line(fd, end)[1] == entry_line(entry)
    finally:
        os.close(fd)


def check_head(path: str | os.PathLike, head: str | None) -> None:
    """Raise StoreDamaged unless the log at ``path`` ends, with a complete line, at the entry whose
    hash is ``head`` (the store's record of its last entry); ``head`` None means the store has no
    audit history, so the log must be absent or empty.

    Writing commands call this before they append (after a pending journal has been rolled
    forward: until then the log may legitimately lag the store by the journal's entry), so a log
    that was deleted, cut, extended or torn is reported instead of being silently restarted or
    shortened by the next append. Reads only the end of the file: it runs on every write.
    """
    path = Path(path)
    try:
        fd = _open(path, os.O_RDONLY)
    except FileNotFoundError:
        if head is None:
            return
        raise StoreDamaged(
            f"audit log {path} is missing but the store records audit history (last entry {head[:12]}...); {_fix(path)}"
        ) from None
    try:
        size = os.fstat(fd).st_size
        if head is None:
            if size:
                raise StoreDamaged(f"audit log {path} has entries but the store records none; {_fix(path)}")
            return
        if size == 0:
            raise StoreDamaged(
                f"audit log {path} is empty but the store records audit history "
                f"(last entry {head[:12]}...); {_fix(path)}"
            )
        if _torn_line(fd, size)[1]:
            raise StoreDamaged(f"audit log {path} ends with an incomplete line (a torn write or an edit); {_fix(path)}")
        last = _entry_ending_at(fd, path, size)
        assert last is not None  # size > 0
        if last["hash"] != head:
            raise StoreDamaged(
                f"audit log {path} ends at entry seq {last['seq']}, not at the store's last recorded "
                f"entry (hash {head[:12]}...): it was shortened, or entries were added or replaced; "
                f"{_fix(path)}"
            )
    finally:
        os.close(fd)


def append(path: str | os.PathLike, entry: dict, *, key: bytes | None = None) -> None:
    """Append ``entry`` (made by :func:`new_entry` from the log's last entry, with the same
    ``key``) durably. The file is created owner-only.

    A torn final line is dropped only when its bytes are the start of ``entry``'s own line: the
    store's committed journal re-appends the entry whose append a crash cut. Any other torn line
    is damage and stays for the operator to see. A final entry missing only its newline gets one.
    Only a seq-0 entry starts a missing log; whether the store may have no log is for
    :func:`check_head` to say, before the entry is built. Raises ValueError when ``entry`` was
    altered (a programming error) and StoreDamaged when the log is missing, has another torn tail
    or does not end at ``entry``'s predecessor; the file is then unchanged.
    """
    path = Path(path)
    if entry_hash(entry, key) != entry.get("hash"):
        raise ValueError("audit entry was altered after new_entry(): its hash does not match")
    created = False
    try:
        try:
            fd = _open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            # Only the first entry may start a log: anything else means the log was deleted.
            if (entry["seq"], entry["prev"]) != (0, GENESIS):
                raise StoreDamaged(
                    f"audit log {path} is missing, which entry seq {entry['seq']} does not follow: "
                    f"it was deleted; {_fix(path)}"
                ) from None
            fd = _open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND)
            created = True
    except StoreDamaged:
        raise
    except OSError as exc:
        raise _write_error(exc, path) from None
    try:
        data = entry_line(entry)
        size = os.fstat(fd).st_size
        keep, torn = _torn_line(fd, size)
        separator = b""
        if torn and not data.startswith(torn):
            tail = _decode(torn, path)
            if tail is None:
                raise StoreDamaged(
                    f"audit log {path} ends with an incomplete line that is not the start of the "
                    f"entry being appended (seq {entry['seq']}): a torn write erase did not make, "
                    f"or an edit; {_fix(path)}"
                )
            keep, separator = size, b"\n"  # a complete entry missing only its newline
        else:
            tail = _entry_ending_at(fd, path, keep)
        expected = (0, GENESIS) if tail is None else (tail["seq"] + 1, tail["hash"])
        if (entry["seq"], entry["prev"]) != expected:
            last = "is empty" if tail is None else f"ends at entry seq {tail['seq']}"
            raise StoreDamaged(
                f"audit log {path} {last}, which entry seq {entry['seq']} does not follow: "
                f"it was shortened, or entries were added or replaced; {_fix(path)}"
            )
        try:
            if keep < size:
                os.ftruncate(fd, keep)
            _write_all(fd, separator + data)
            os.fsync(fd)
        except OSError as exc:
            # Leave no half-written line behind when the disk fills up mid-write.
            try:
                os.ftruncate(fd, keep)
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
        return StoreNotWritable(f"cannot write audit log {path} ({exc.strerror}); make the store writable by its owner")
    return exc
