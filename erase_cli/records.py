"""Reading and validating input records (JSONL) and id lists, with file and line in every error.

Everything here streams: a file is read one bounded line at a time, so neither a 100 MB line nor a
100k-deep nesting decides how much memory or stack an ingest uses. Errors are
`InvalidInput("FILE:LINE: problem; fix")` so the CLI can print them as they are.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from erase_cli.errors import InvalidInput, NotFound

MAX_ID_BYTES = 1024
MAX_LINE_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 64
# |v.v - 1| below which a vector's float32 rounding counts as a unit vector already: the float32
# rounding of an exact unit vector is within about 2**-23 of it, so every stored embedding passes.
UNIT_SLACK = 2.0**-20

_DRAIN_CHUNK = 2**20
_STDIN = "-"


@dataclass(frozen=True, eq=False)
class Record:
    """One validated training record.

    `target` is a list when several strings are acceptable (demonstrations show the first);
    `vector` is float32, L2-normalised, shape (d,), and only set when read with a vector field.
    """

    id: str
    input: str
    target: str | list[str]
    choices: list[str] | None = None
    vector: np.ndarray | None = None

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would compare arrays with ==, whose truth value is ambiguous.
        if not isinstance(other, Record):
            return NotImplemented
        if (self.id, self.input, self.target, self.choices) != (
            other.id,
            other.input,
            other.target,
            other.choices,
        ):
            return False
        if self.vector is None or other.vector is None:
            return self.vector is other.vector
        return bool(np.array_equal(self.vector, other.vector))

    __hash__ = None  # type: ignore[assignment]  # list targets make records unhashable anyway


@dataclass(frozen=True)
class Skipped:
    """A line left out by `skip_invalid`; `message` is the full "FILE:LINE: problem; fix" text,
    `ids` the record ids it quotes (as repr), so that output can redact them."""

    line: int
    message: str
    ids: tuple[str, ...] = ()


class _LineProblem(Exception):
    """A problem with one line; the caller adds the file and line number. `ids`: the record ids
    the message quotes."""

    def __init__(self, message: str, ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.ids = ids


def normalise_id(value: Any) -> str:
    """Return the canonical string form of a record id.

    An integer becomes its decimal string, so `1` and `"1"` are the same id; a string is kept
    exactly as it is. Raises InvalidInput for anything else, for a blank id, for an id longer
    than MAX_ID_BYTES in UTF-8, and for NUL or line breaks inside (they would break id files).
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        if isinstance(value, float):
            raise InvalidInput(
                f"id {value!r} is a non-integer number (or an integer beyond 64 bits); write the id as a JSON string"
            )
        raise InvalidInput(f"id must be a string or an integer, not {_json_type(value)}; write the id as a JSON string")
    text = str(value) if isinstance(value, int) else value
    if not text.strip():
        raise InvalidInput("id is empty; give every record a non-empty id")
    if "\x00" in text:
        raise InvalidInput("id contains a NUL character; remove it from the id")
    if "\n" in text or "\r" in text:
        raise InvalidInput("id contains a line break; ids must fit on one line")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput("id contains an unpaired surrogate and cannot be written as UTF-8; fix the id") from None
    if size > MAX_ID_BYTES:
        raise InvalidInput(f"id is {size} bytes long, over the limit of {MAX_ID_BYTES}; use a shorter id")
    return text


def normalise_vector(v: Any) -> np.ndarray:
    """Return `v` as a float32 unit vector of shape (d,).

    Raises InvalidInput unless `v` is a non-empty flat list (or 1-D array) of finite numbers with
    at least one non-zero entry.
    """
    if isinstance(v, np.ndarray):
        if (
            v.ndim != 1
            or v.size == 0
            or not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer))
        ):
            raise InvalidInput(
                f"vector must be a non-empty 1-D array of numbers, got shape {v.shape} "
                f"dtype {v.dtype}; pass a flat list of numbers"
            )
        x = v.astype(np.float64)
    else:
        if not isinstance(v, list) or not v:
            raise InvalidInput(
                f"vector must be a non-empty list of numbers, not {_json_type(v)}; write it as [0.1, -0.2, ...]"
            )
        for i, item in enumerate(v):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise InvalidInput(f"vector entry {i} is {_json_type(item)}, not a number; a vector holds numbers only")
        try:
            x = np.asarray(v, dtype=np.float64)
        except OverflowError:
            raise InvalidInput("vector has an integer too large for a float; scale the vector down") from None
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise InvalidInput(f"vector entry {bad} is {x[bad]!r}; NaN and infinite values are not allowed")
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    w = x32.astype(np.float64)
    if abs(float(np.dot(w, w)) - 1.0) <= UNIT_SLACK:
        # Already a stored embedding, written out exactly or as shortest float32 text: dividing
        # by its norm again would move last bits, and an export re-ingested elsewhere must fit
        # bit for bit like the original. (Any other unit vector only loses its float32 rounding.)
        return x32
    # Scaling by the largest magnitude first keeps the norm from overflowing (1e300 entries) or
    # underflowing to zero (1e-320 entries) in the squares.
    peak = np.max(np.abs(x))
    if peak == 0.0:
        raise InvalidInput("vector is all zeros; a zero vector has no direction to cluster by")
    x = x / peak
    x /= np.sqrt(np.dot(x, x))
    return x.astype(np.float32)


def read_jsonl(
    path: str | Path,
    *,
    id_field: str = "id",
    input_field: str = "input",
    target_field: str = "target",
    vector_field: str | None = None,
    skip_invalid: bool = False,
) -> tuple[list[Record], list[Skipped]]:
    """Read and validate a JSONL file of records ("-" reads stdin).

    Returns the valid records in file order and, with `skip_invalid`, the lines left out.
    Without `skip_invalid` the first bad line raises InvalidInput naming the file and line.
    Blank lines are ignored. Duplicate ids are bad lines (the later one is the one reported or
    skipped). A file with no records at all, or with `skip_invalid` and no valid record, raises
    InvalidInput: an ingest that silently keeps nothing usually means wrong field names.
    Raises NotFound for a missing file.
    """
    name = "<stdin>" if str(path) == _STDIN else str(path)
    fields = _Fields(id_field, input_field, target_field, vector_field)
    records: list[Record] = []
    skipped: list[Skipped] = []
    first_line_of: dict[str, int] = {}
    dim: int | None = None
    saw_content = False

    with _open_binary(path, name) as stream:
        for lineno, raw in _lines(stream):
            try:
                if raw is None:
                    raise _LineProblem(
                        f"line is longer than {MAX_LINE_BYTES // 2**20} MiB; "
                        "split the record or move large fields out of the file"
                    )
                if not _decode(raw).strip():
                    continue
                saw_content = True
                obj = _parse_object(raw)
                record = _record_from(obj, fields)
            except _LineProblem as problem:
                message = f"{name}:{lineno}: {problem}"
                if not skip_invalid:
                    raise InvalidInput(message).about(*problem.ids) from None
                skipped.append(Skipped(lineno, message, problem.ids))
                continue
            problem_text, problem_ids = None, ()
            earlier = first_line_of.get(record.id)
            if earlier is not None:
                problem_text = (
                    f"duplicate id {record.id!r} (first on line {earlier}); ids must be unique "
                    '(an integer id and its decimal string, like 1 and "1", are the same id)'
                )
                problem_ids = (record.id,)
            elif record.vector is not None and dim is not None and record.vector.shape[0] != dim:
                problem_text = (
                    f"{vector_field} has {record.vector.shape[0]} numbers but the first vector "
                    f"in the file has {dim}; every vector must have the same length"
                )
            if problem_text is not None:
                message = f"{name}:{lineno}: {problem_text}"
                if not skip_invalid:
                    raise InvalidInput(message).about(*problem_ids)
                skipped.append(Skipped(lineno, message, problem_ids))
                continue
            if record.vector is not None and dim is None:
                dim = record.vector.shape[0]
            first_line_of[record.id] = lineno
            records.append(record)

    if not saw_content and not skipped:
        raise InvalidInput(f"{name}: no records (the file is empty); write one JSON object per line")
    if not records:
        raise InvalidInput(
            f"{name}: no valid records, {len(skipped)} lines skipped (first: "
            f"{skipped[0].message}); check the field names (--id-field, --input-field, "
            "--target-field)"
        ).about(*skipped[0].ids)
    return records, skipped


def read_ids(path: str | Path) -> list[str]:
    """Read one id per line from a file, or from stdin when `path` is "-".

    Only the line break (and a preceding carriage return) is removed, so an id may keep
    surrounding spaces; blank lines are skipped. Ids are returned in file order, repeats kept; a
    file with no id at all gives [] (a cron job's empty deletion list is no error).
    Raises InvalidInput naming the line for non-UTF-8 bytes, NUL or an over-long id; NotFound for
    a missing file.
    """
    name = "<stdin>" if str(path) == _STDIN else str(path)
    ids: list[str] = []
    with _open_binary(path, name) as stream:
        lineno = 0
        while True:
            # +3: room for "\r\n" and one byte more, which proves the line too long.
            raw = stream.readline(MAX_ID_BYTES + 3)
            if not raw:
                break
            lineno += 1
            body = raw[:-1] if raw.endswith(b"\n") else raw
            if body.endswith(b"\r"):
                body = body[:-1]
            if len(body) > MAX_ID_BYTES:
                raise InvalidInput(f"{name}:{lineno}: id is longer than {MAX_ID_BYTES} bytes; put one id per line")
            try:
                text = _decode(body)
            except _LineProblem as problem:
                raise InvalidInput(f"{name}:{lineno}: {problem}") from None
            if not text.strip():
                continue
            try:
                ids.append(normalise_id(text))
            except InvalidInput as problem:
                raise InvalidInput(f"{name}:{lineno}: {problem}") from None
    return ids


@dataclass(frozen=True)
class _Fields:
    id: str
    input: str
    target: str
    vector: str | None


def _open_binary(path: str | Path, name: str) -> IO[bytes]:
    if str(path) == _STDIN:
        return _NoClose(sys.stdin.buffer)
    p = Path(path)
    try:
        return p.open("rb")
    except FileNotFoundError:
        raise NotFound(f"{name}: no such file; check the path") from None
    except IsADirectoryError:
        raise InvalidInput(f"{name} is a directory; pass a JSONL file") from None
    except PermissionError:
        raise InvalidInput(f"{name}: permission denied; make the file readable") from None


class _NoClose:
    """Lets stdin be used in a `with` block without closing it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def __enter__(self) -> IO[bytes]:
        return self._stream

    def __exit__(self, *exc: object) -> None:
        return None


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, line without its line break), or None for a line over the limit.

    A line over MAX_LINE_BYTES is never held whole: its rest is read in bounded chunks and
    dropped, so `skip_invalid` can go on with the next line.
    """
    lineno = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 2)
        if not raw:
            return
        lineno += 1
        complete = raw.endswith(b"\n")
        body = raw[:-1] if complete else raw
        if body.endswith(b"\r"):
            body = body[:-1]
        if len(body) > MAX_LINE_BYTES:
            if not complete:
                while True:
                    rest = stream.readline(_DRAIN_CHUNK)
                    if not rest or rest.endswith(b"\n"):
                        break
            yield lineno, None
            continue
        if lineno == 1 and body.startswith(b"\xef\xbb\xbf"):
            # Editors on Windows add a byte-order mark; it is not part of the first record.
            body = body[3:]
        yield lineno, body


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _LineProblem(
            f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line); save the file as UTF-8"
        ) from None


def _parse_object(raw: bytes) -> dict:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        if "depth" in err.msg:
            raise _LineProblem(_too_deep()) from None
        # orjson reports non-finite tokens as generic syntax errors; Python's json would even
        # accept them, so say plainly what is wrong.
        rest = err.doc[err.pos : err.pos + 8] if isinstance(err.doc, str) else ""
        for token in ("NaN", "Infinity"):
            if rest.startswith(token):
                signed = "-" if err.doc[err.pos - 1 : err.pos] == "-" else ""
                raise _LineProblem(
                    f"{signed}{token} at column {err.colno} is not a JSON number; numbers must be finite"
                ) from None
        if "infinity" in err.msg:
            raise _LineProblem(
                f"number at column {err.colno} is too large for a double; numbers must be finite"
            ) from None
        raise _LineProblem(
            f"malformed JSON ({err.msg} at column {err.colno}); write one JSON object per line"
        ) from None
    if not isinstance(obj, dict):
        raise _LineProblem(f"line is {_json_type(obj)}, not a JSON object; write one JSON object per line")
    # Counting brackets is a cheap upper bound on the depth; only suspicious lines are walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth_exceeds(obj, MAX_JSON_DEPTH):
        raise _LineProblem(_too_deep())
    return obj


def _too_deep() -> str:
    return f"JSON is nested more than {MAX_JSON_DEPTH} levels deep; flatten the record"


def _depth_exceeds(obj: Any, limit: int) -> bool:
    """True if containers nest more than `limit` levels; iterative, so deep input cannot overflow."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _record_from(obj: dict, fields: _Fields) -> Record:
    try:
        rid = normalise_id(_required(obj, fields.id, "--id-field"))
    except InvalidInput as err:
        raise _LineProblem(f"field {fields.id!r}: {err}") from None
    if rid != rid.strip():
        # Ids are matched exactly and never stripped, so " 7" would be a record that a deletion
        # request for "7" can never reach.
        raise _LineProblem(
            f"field {fields.id!r}: id {rid!r} has leading or trailing whitespace; remove it "
            f"(ids are matched exactly: {rid.strip()!r} would not find this record)",
            (rid, rid.strip()),
        )
    text = _required(obj, fields.input, "--input-field")
    if not isinstance(text, str):
        raise _LineProblem(
            f"field {fields.input!r} must be a string, not {_json_type(text)}; write the input as a JSON string"
        )
    if not text.strip():
        raise _LineProblem(f"field {fields.input!r} is empty; give every record an input")
    target = _target(_required(obj, fields.target, "--target-field"), fields.target)
    choices = _choices(obj.get("choices"))
    if choices is not None:
        targets = [target] if isinstance(target, str) else target
        missing = [t for t in targets if t not in choices]
        if missing:
            raise _LineProblem(
                f"target {missing[0]!r} is not one of the choices; add it to 'choices' or correct the target"
            )
    vector = None
    if fields.vector is not None:
        raw_vector = _required(obj, fields.vector, "--vector-field")
        try:
            vector = normalise_vector(raw_vector)
        except InvalidInput as err:
            raise _LineProblem(f"field {fields.vector!r}: {err}") from None
    return Record(id=rid, input=text, target=target, choices=choices, vector=vector)


def _required(obj: dict, field: str, option: str) -> Any:
    if field not in obj or obj[field] is None:
        keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
        raise _LineProblem(
            f"missing field {field!r} (the object has keys {keys}); add it, or name the right field with {option}"
        )
    return obj[field]


def _target(value: Any, field: str) -> str | list[str]:
    if isinstance(value, str):
        if not value.strip():
            raise _LineProblem(f"field {field!r} is empty; give every record a target")
        return value
    if isinstance(value, list):
        if not value:
            raise _LineProblem(f"field {field!r} is an empty list; list at least one acceptable target")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise _LineProblem(
                    f"field {field!r} item {i} is {_describe(item)}; a target list holds non-empty strings"
                )
        return value
    raise _LineProblem(
        f"field {field!r} must be a string or a list of strings, not {_json_type(value)}; write the target as text"
    )


def _choices(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise _LineProblem(
            f"field 'choices' must be a non-empty list of strings, not {_describe(value)}; "
            "list the options or leave the field out"
        )
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _LineProblem(f"field 'choices' item {i} is {_describe(item)}; choices are non-empty strings")
    if len(set(value)) != len(value):
        repeated = next(c for i, c in enumerate(value) if c in value[:i])
        raise _LineProblem(f"choice {repeated!r} is listed twice; list each option once")
    return value


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list) and not value:
        return "an empty list"
    return _json_type(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
