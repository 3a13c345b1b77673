import io
import sys

import numpy as np
import orjson
import pytest

from erase_cli import records
from erase_cli.errors import InvalidInput, NotFound
from erase_cli.records import (
    MAX_ID_BYTES,
    MAX_JSON_DEPTH,
    Record,
    normalise_id,
    normalise_vector,
    read_ids,
    read_jsonl,
)


def write_lines(tmp_path, *lines, name="data.jsonl"):
    path = tmp_path / name
    body = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
    path.write_bytes(body)
    return path


def rec(rid="r1", **extra):
    obj = {"id": rid, "input": "where is my parcel", "target": "track a package"}
    obj.update(extra)
    return orjson.dumps(obj).decode()


GOOD = rec("ok")


def assert_bad_line(path, lineno, *fragments, **kwargs):
    with pytest.raises(InvalidInput) as info:
        read_jsonl(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}:{lineno}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- normalise_id -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, "1"), ("1", "1"), (-7, "-7"), (2**63 - 1, str(2**63 - 1)), (" a b ", " a b "), ("é", "é")],
)
def test_normalise_id_accepts_ints_and_strings(value, expected):
    assert normalise_id(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (True, "boolean"),
        (1.0, "non-integer number"),
        (None, "null"),
        ([1], "array"),
        ({"a": 1}, "object"),
        ("", "empty"),
        ("   ", "empty"),
        ("a\x00b", "NUL"),
        ("a\nb", "line break"),
        ("a\rb", "line break"),
        ("x" * (MAX_ID_BYTES + 1), "over the limit"),
        ("é" * (MAX_ID_BYTES // 2 + 1), "over the limit"),
        ("\ud800", "surrogate"),
    ],
)
def test_normalise_id_refuses(value, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        normalise_id(value)


def test_normalise_id_limit_is_inclusive():
    assert normalise_id("x" * MAX_ID_BYTES) == "x" * MAX_ID_BYTES


# ---- normalise_vector ---------------------------------------------------------------------------


def test_normalise_vector_unit_float32():
    v = normalise_vector([3, 4])
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, [0.6, 0.8], rtol=1e-7)


def test_normalise_vector_survives_extreme_magnitudes():
    big = normalise_vector([1e300, 1e300])
    tiny = normalise_vector([1e-320, 0.0])
    np.testing.assert_allclose(big, [2**-0.5, 2**-0.5], rtol=1e-6)
    np.testing.assert_array_equal(tiny, [1.0, 0.0])


@pytest.mark.parametrize("dim", [2, 8, 32, 384])
def test_normalise_vector_leaves_a_stored_embedding_bit_identical(dim):
    """An export's vectors (float32 written exactly as float64 text, or as shortest float32
    text) re-ingested with --vector-field must be stored bit for bit as they were, or a fit of the
    copy could differ from the original's."""
    rng = np.random.default_rng(dim)
    for _ in range(500):
        raw = rng.normal(size=dim) * rng.uniform(1e-3, 1e3)
        stored = normalise_vector(raw.tolist())
        exact = orjson.loads(orjson.dumps(stored.astype(np.float64).tolist()))
        short = orjson.loads(orjson.dumps(stored, option=orjson.OPT_SERIALIZE_NUMPY))
        for again in (normalise_vector(exact), normalise_vector(short), normalise_vector(stored)):
            assert again.dtype == np.float32
            assert again.tobytes() == stored.tobytes()


def test_normalise_vector_still_normalises_near_unit_float64_input():
    v = normalise_vector([0.6 * (1 + 1e-3), 0.8 * (1 + 1e-3)])
    assert abs(float(np.dot(v.astype(np.float64), v)) - 1.0) < 1e-6


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([0, 0, 0], "zeros"),
        ([1.0, float("nan")], "NaN"),
        ([float("inf"), 1.0], "infinite"),
        ([], "non-empty list"),
        ("1,2", "non-empty list"),
        ([1, "2"], "entry 1"),
        ([1, True], "entry 1"),
        ([[1, 2]], "entry 0"),
        (np.zeros((2, 2)), "1-D"),
    ],
)
def test_normalise_vector_refuses(value, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        normalise_vector(value)


# ---- read_jsonl: good input ---------------------------------------------------------------------


def test_reads_records_in_order_with_choices_lists_and_vectors(tmp_path):
    path = write_lines(
        tmp_path,
        rec(1, choices=["track a package", "cancel an order"], vec=[3, 4]),
        "",
        "   ",
        rec("b", target=["x", "y"], vec=[0, 2]),
    )
    got, skipped = read_jsonl(path, vector_field="vec")
    assert skipped == []
    assert [r.id for r in got] == ["1", "b"]
    assert got[0].choices == ["track a package", "cancel an order"]
    assert got[1].target == ["x", "y"] and got[1].choices is None
    np.testing.assert_allclose(got[0].vector, [0.6, 0.8], rtol=1e-7)
    assert got[1].vector.dtype == np.float32


def test_custom_field_names_and_extra_fields_ignored(tmp_path):
    path = write_lines(tmp_path, '{"key": 5, "q": "hi", "a": "yo", "meta": {"x": 1}}')
    (r,), _ = read_jsonl(path, id_field="key", input_field="q", target_field="a")
    assert r == Record(id="5", input="hi", target="yo")


def test_vector_absent_unless_asked(tmp_path):
    path = write_lines(tmp_path, rec(vec=[1, 2]))
    (r,), _ = read_jsonl(path)
    assert r.vector is None


def test_crlf_and_bom_and_no_final_newline(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + rec("a").encode() + b"\r\n" + rec("b").encode())
    got, _ = read_jsonl(path)
    assert [r.id for r in got] == ["a", "b"]


def test_null_choices_means_none(tmp_path):
    (r,), _ = read_jsonl(write_lines(tmp_path, rec(choices=None)))
    assert r.choices is None


def test_record_equality_compares_vectors():
    a = Record("1", "x", "y", None, np.array([1.0, 0.0], dtype=np.float32))
    b = Record("1", "x", "y", None, np.array([0.0, 1.0], dtype=np.float32))
    assert a != b
    assert a == Record("1", "x", "y", None, a.vector.copy())
    assert a != Record("1", "x", "y")


def test_stdin_dash(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((GOOD + "\n").encode())))
    got, _ = read_jsonl("-")
    assert [r.id for r in got] == ["ok"]


# ---- read_jsonl: bad input ----------------------------------------------------------------------


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_directory(tmp_path):
    with pytest.raises(InvalidInput, match="is a directory"):
        read_jsonl(tmp_path)


@pytest.mark.parametrize("body", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path, body):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(body)
    with pytest.raises(InvalidInput, match="no records"):
        read_jsonl(path)


BAD_LINES = [
    (b'{"id": "a", "input": "caf\xe9", "target": "t"}', "not valid UTF-8"),
    ('{"id": "a", "input": "x", "target": "t"', "malformed JSON"),
    ("[1, 2]", "an array, not a JSON object"),
    ('"just a string"', "a string, not a JSON object"),
    ('{"input": "x", "target": "t"}', "missing field 'id'"),
    ('{"id": "a", "target": "t"}', "missing field 'input'"),
    ('{"id": "a", "input": "x"}', "missing field 'target'"),
    ('{"id": null, "input": "x", "target": "t"}', "missing field 'id'"),
    ('{"id": "", "input": "x", "target": "t"}', "id is empty"),
    ('{"id": 1.5, "input": "x", "target": "t"}', "non-integer"),
    ('{"id": true, "input": "x", "target": "t"}', "boolean"),
    ('{"id": "a\\u0000", "input": "x", "target": "t"}', "NUL"),
    ('{"id": "a", "input": "", "target": "t"}', "'input' is empty"),
    ('{"id": "a", "input": 5, "target": "t"}', "'input' must be a string"),
    ('{"id": "a", "input": "x", "target": ""}', "'target' is empty"),
    ('{"id": "a", "input": "x", "target": []}', "empty list"),
    ('{"id": "a", "input": "x", "target": ["ok", ""]}', "item 1"),
    ('{"id": "a", "input": "x", "target": ["ok", 3]}', "item 1"),
    ('{"id": "a", "input": "x", "target": 3}', "string or a list"),
    ('{"id": "a", "input": "x", "target": "t", "choices": "t"}', "'choices' must be"),
    ('{"id": "a", "input": "x", "target": "t", "choices": []}', "'choices' must be"),
    ('{"id": "a", "input": "x", "target": "t", "choices": ["t", ""]}', "item 1"),
    ('{"id": "a", "input": "x", "target": "t", "choices": ["t", 2]}', "item 1"),
    ('{"id": "a", "input": "x", "target": "t", "choices": ["t", "t"]}', "listed twice"),
    ('{"id": "a", "input": "x", "target": "t", "choices": ["u", "v"]}', "not one of the choices"),
    ('{"id": "a", "input": "x", "target": "t", "v": "1,2"}', "'v'"),
    ('{"id": "a", "input": "x", "target": "t", "v": [1, "2"]}', "entry 1"),
    ('{"id": "a", "input": "x", "target": "t", "v": [0, 0]}', "zeros"),
    ('{"id": "a", "input": "x", "target": "t", "v": [1, NaN]}', "NaN"),
    ('{"id": "a", "input": "x", "target": "t", "v": [1, Infinity]}', "Infinity"),
    ('{"id": "a", "input": "x", "target": "t", "v": [-Infinity, 1]}', "-Infinity"),
    ('{"id": "a", "input": "x", "target": "t", "v": [1e400, 1]}', "too large"),
    ('{"id": "a", "input": "x", "target": "t"}', "missing field 'v'"),
]


@pytest.mark.parametrize(("line", "fragment"), BAD_LINES)
def test_bad_line_names_file_line_and_problem(tmp_path, line, fragment):
    path = write_lines(tmp_path, rec("ok", v=[1, 0]), "", line)
    message = assert_bad_line(path, 3, fragment, vector_field="v")
    assert "\n" not in message and "; " in message


def test_missing_field_names_the_option_and_the_keys(tmp_path):
    path = write_lines(tmp_path, '{"question": "x", "id": "a", "target": "t"}')
    assert_bad_line(path, 1, "--input-field", "'question'")


def test_duplicate_ids_name_both_lines_and_int_str_collide(tmp_path):
    path = write_lines(tmp_path, rec(1), rec("2"), rec("1"))
    assert_bad_line(path, 3, "duplicate id '1'", "first on line 1")


def test_vector_length_must_match_first(tmp_path):
    path = write_lines(tmp_path, rec("a", v=[1, 2, 3]), rec("b", v=[1, 2]))
    assert_bad_line(path, 2, "has 2 numbers", "has 3", vector_field="v")


def test_deep_nesting_refused_without_recursion_error(tmp_path):
    deep = '{"id": "a", "input": "x", "target": "t", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    just_over = '{"id": "a", "input": "x", "target": "t", "extra": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}"
    assert_bad_line(write_lines(tmp_path, deep, name="deep.jsonl"), 1, "nested more than")
    assert_bad_line(write_lines(tmp_path, just_over, name="over.jsonl"), 1, "nested more than")


def test_nesting_at_the_limit_and_many_brackets_are_fine(tmp_path):
    at_limit = (
        '{"id": "a", "input": "x", "target": "t", "extra": '
        + "[" * (MAX_JSON_DEPTH - 1)
        + "]" * (MAX_JSON_DEPTH - 1)
        + "}"
    )
    wide = rec("b", extra=[[i] for i in range(500)], input="[[[[{{{{" * 50)
    got, _ = read_jsonl(write_lines(tmp_path, at_limit, wide))
    assert [r.id for r in got] == ["a", "b"]


def test_overlong_line_is_refused_and_skippable(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(records, "_DRAIN_CHUNK", 64)
    long_line = rec("big", input="y" * 5000)
    path = write_lines(tmp_path, GOOD, long_line, rec("after"))
    assert_bad_line(path, 2, "longer than")
    got, skipped = read_jsonl(path, skip_invalid=True)
    assert [r.id for r in got] == ["ok", "after"]
    assert [s.line for s in skipped] == [2]


def test_real_limit_line_of_17_mib(tmp_path):
    path = tmp_path / "huge.jsonl"
    path.write_bytes(b'{"id": "a", "input": "' + b"x" * (17 * 2**20) + b'", "target": "t"}\n' + GOOD.encode())
    got, skipped = read_jsonl(path, skip_invalid=True)
    assert [r.id for r in got] == ["ok"] and skipped[0].line == 1


def test_skip_invalid_collects_and_keeps_first_duplicate(tmp_path):
    path = write_lines(
        tmp_path,
        rec("a"),
        "not json",
        rec("b", v=[1, 0]),
        rec("a"),
        rec("c", v=[1, 0, 0]),
        rec("d", v=[0, 1]),
    )
    got, skipped = read_jsonl(path, vector_field="v", skip_invalid=True)
    assert [r.id for r in got] == ["b", "d"]
    assert [s.line for s in skipped] == [1, 2, 4, 5]
    assert all(s.message.startswith(f"{path}:{s.line}: ") for s in skipped)


@pytest.mark.parametrize("rid", [" a", "a ", "\ta", "a\u00a0"])
def test_ids_with_surrounding_whitespace_are_refused(tmp_path, rid):
    path = write_lines(tmp_path, GOOD, rec(rid))
    message = assert_bad_line(path, 2, "whitespace", repr(rid), "remove it")
    assert repr(rid.strip()) in message
    got, skipped = read_jsonl(path, skip_invalid=True)
    assert [r.id for r in got] == ["ok"] and [s.line for s in skipped] == [2]


def test_inner_whitespace_in_an_id_is_fine(tmp_path):
    got, _ = read_jsonl(write_lines(tmp_path, rec("a b")))
    assert [r.id for r in got] == ["a b"]


def test_skip_invalid_with_nothing_valid_still_fails(tmp_path):
    path = write_lines(tmp_path, '{"q": "x"}', '{"q": "y"}')
    with pytest.raises(InvalidInput, match="no valid records, 2 lines skipped"):
        read_jsonl(path, skip_invalid=True)


def test_reading_streams_lines(tmp_path, monkeypatch):
    # The file must never be read whole: a bounded readline is the only read.
    path = write_lines(tmp_path, GOOD)
    real_open = records.Path.open

    class Guard:
        def __init__(self, f):
            self.f = f

        def readline(self, size=-1):
            assert 0 < size <= records.MAX_LINE_BYTES + 2
            return self.f.readline(size)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(records.Path, "open", lambda self, mode: Guard(real_open(self, mode)))
    assert len(read_jsonl(path)[0]) == 1


# ---- read_ids -----------------------------------------------------------------------------------


def ids_file(tmp_path, body: bytes):
    path = tmp_path / "ids.txt"
    path.write_bytes(body)
    return path


def test_read_ids_strips_only_line_breaks(tmp_path):
    path = ids_file(tmp_path, b"a\n b \r\n\n\nc\r\nlast")
    assert read_ids(path) == ["a", " b ", "c", "last"]


def test_read_ids_keeps_repeats_and_order(tmp_path):
    assert read_ids(ids_file(tmp_path, b"2\n1\n2\n")) == ["2", "1", "2"]


def test_read_ids_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"x\ny\n")))
    assert read_ids("-") == ["x", "y"]


def test_read_ids_stdin_empty(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert read_ids("-") == []


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        (b"ok\nbad\x00id\n", 2, "NUL"),
        (b"ok\n\ncaf\xe9\n", 3, "UTF-8"),
        (b"ok\n" + b"x" * (10 * 2**20) + b"\n", 2, "longer than"),
        (b"x" * (MAX_ID_BYTES + 1), 1, "longer than"),
        (b"a\rb\n", 1, "line break"),
    ],
)
def test_read_ids_bad_lines(tmp_path, body, line, fragment):
    path = ids_file(tmp_path, body)
    with pytest.raises(InvalidInput) as info:
        read_ids(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert fragment in str(info.value)


def test_read_ids_limit_is_inclusive(tmp_path):
    body = b"y" * MAX_ID_BYTES + b"\r\n"
    assert read_ids(ids_file(tmp_path, body)) == ["y" * MAX_ID_BYTES]


@pytest.mark.parametrize("body", [b"", b"\n\n  \n"])
def test_read_ids_empty_is_no_error(tmp_path, body):
    # A cron job's empty deletion list: the caller decides that an empty batch does nothing.
    assert read_ids(ids_file(tmp_path, body)) == []


def test_read_ids_missing_file(tmp_path):
    with pytest.raises(NotFound):
        read_ids(tmp_path / "none.txt")
