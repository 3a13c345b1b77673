import hashlib
import hmac
import os
import stat
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from erase_cli import audit
from erase_cli.errors import StoreDamaged

SECRET = b"\x01" * 32
T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)


def forget_details(*ids):
    return {
        "id_hashes": [audit.id_hash(SECRET, record_id) for record_id in ids],
        "crossings": [{"iteration": 2, "cluster": 5}],
        "action_taken": "refit",
        "prompt_changed": True,
        "prompt_digest_before": "a" * 64,
        "prompt_digest_after": "b" * 64,
        "state_digest_before": "c" * 64,
        "state_digest_after": "d" * 64,
        "purged": ["records.zarr/inputs/c/0", "cache/prefix.bin"],
        "elapsed_ms": 12.5,
        "n_forgotten": len(ids),
    }


def write_log(path, n=5):
    entries = []
    for i in range(n):
        action = ("ingest", "fit", "forget")[min(i, 2)]
        details = forget_details(f"rec-{i}") if action == "forget" else {"n_records": 10 + i}
        entry = audit.new_entry(audit.last_entry(path), action, details, now=T0 + timedelta(seconds=i))
        audit.append(path, entry)
        entries.append(entry)
    return entries


def rewrite(path, entries):
    path.write_bytes(b"".join(audit.entry_line(entry) for entry in entries))


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "audit.jsonl"
    return path, write_log(path)


def test_id_hash_is_hmac_sha256_of_utf8_id():
    expected = hmac.new(SECRET, "café-7".encode(), hashlib.sha256).hexdigest()
    assert audit.id_hash(SECRET, "café-7") == expected
    assert audit.id_hash(b"other secret", "café-7") != expected


def test_entries_chain_seq_prev_and_hash(log):
    path, written = log
    entries = audit.read_entries(path)
    assert entries == written
    assert [entry["seq"] for entry in entries] == [0, 1, 2, 3, 4]
    assert entries[0]["prev"] == "0" * 64
    for before, after in zip(entries, entries[1:]):
        assert after["prev"] == before["hash"]
    body = {key: value for key, value in entries[2].items() if key != "hash"}
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert entries[2]["hash"] == digest
    assert audit.verify_chain(entries) == []
    assert audit.verify_file(path) == []


def test_time_is_utc_with_z():
    eastern = timezone(timedelta(hours=-5))
    entry = audit.new_entry(None, "fit", {}, now=datetime(2026, 1, 2, 7, 30, tzinfo=eastern))
    assert entry["time"] == "2026-01-02T12:30:00.000000Z"
    now = audit.new_entry(None, "fit", {})["time"]
    parsed = datetime.strptime(now, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs(parsed - datetime.now(timezone.utc)) < timedelta(minutes=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        audit.new_entry(None, "fit", {}, now=datetime(2026, 1, 2))


def test_log_file_is_owner_only_and_lines_are_canonical(log):
    path, written = log
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes() == b"".join(audit.entry_line(entry) for entry in written)


def test_forget_entry_holds_no_raw_id(tmp_path):
    path = tmp_path / "audit.jsonl"
    raw_ids = ["patient-4711", "ünïcode-id"]
    entry = audit.new_entry(None, "forget", forget_details(*raw_ids))
    audit.append(path, entry)
    data = path.read_bytes()
    for raw in raw_ids:
        assert raw.encode() not in data
        assert audit.id_hash(SECRET, raw).encode() in data


@pytest.mark.parametrize(
    "details",
    [
        {"ids": ["patient-4711"]},
        {"id_hashes": ["patient-4711"]},
        {"id_hashes": "a" * 64},
        {"input": "some record text"},
        {"hash": "0" * 64},
        {"seq": 7},
    ],
)
def test_new_entry_refuses_raw_ids_and_reserved_fields(details):
    with pytest.raises(ValueError):
        audit.new_entry(None, "forget", details)


def test_editing_any_field_is_detected(log):
    path, entries = log
    for field, value in [("elapsed_ms", 13.0), ("time", "2020-01-01T00:00:00.000000Z"), ("action", "fit")]:
        edited = [dict(entry) for entry in entries]
        edited[3][field] = value
        problems = audit.verify_chain(edited)
        assert len(problems) == 1 and "line 4 (seq 3" in problems[0] and "edited" in problems[0]


def test_edit_with_recomputed_hash_breaks_the_next_link(log):
    _, entries = log
    edited = [dict(entry) for entry in entries]
    edited[1]["n_records"] = 999
    edited[1]["hash"] = audit.entry_hash(edited[1])
    problems = audit.verify_chain(edited)
    assert len(problems) == 1
    assert "line 3 (seq 2): prev does not match the hash of line 2" in problems[0]


def test_removed_middle_entry_is_detected(log):
    path, entries = log
    rewrite(path, entries[:2] + entries[3:])
    assert audit.verify_file(path) == ["entry seq 2 is missing (removed)"]


def test_removed_first_entries_are_detected(log):
    _, entries = log
    assert audit.verify_chain(entries[2:]) == ["entries seq 0-1 are missing (removed)"]


def test_swapped_entries_are_detected(log):
    _, entries = log
    swapped = [entries[0], entries[2], entries[1], entries[3], entries[4]]
    problems = audit.verify_chain(swapped)
    assert problems == ["line 3 (seq 1) comes after line 2 (seq 2): entries were reordered"]


def test_duplicated_entry_is_detected(log):
    _, entries = log
    problems = audit.verify_chain(entries[:3] + [entries[2]] + entries[3:])
    assert any("seq 2 repeats line 3" in problem for problem in problems)


def test_wrong_genesis_is_detected():
    first = audit.new_entry({"seq": -1, "hash": "f" * 64}, "ingest", {})
    assert first["seq"] == 0
    assert audit.verify_chain([first]) == ["line 1 (seq 0): prev is not the genesis value (rewritten)"]


def test_partially_truncated_last_line_is_reported_with_its_line(log):
    path, _ = log
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    with pytest.raises(StoreDamaged, match="line 5 is not valid JSON"):
        audit.read_entries(path)
    problems = audit.verify_file(path)
    assert len(problems) == 1 and "line 5 is not valid JSON" in problems[0]


def test_removed_last_entry_needs_the_stores_head(log):
    path, entries = log
    rewrite(path, entries[:-1])
    # A cut at the end leaves a valid chain; only the hash the store recorded reveals it.
    assert audit.verify_file(path) == []
    problems = audit.verify_file(path, head=entries[-1]["hash"])
    assert len(problems) == 1 and "entries at the end were removed" in problems[0]
    assert audit.verify_chain(entries, head=entries[-1]["hash"]) == []
    added = audit.verify_chain(entries, head=entries[2]["hash"])
    assert len(added) == 1 and "added outside erase" in added[0]
    assert "deleted or emptied" in audit.verify_chain([], head=entries[-1]["hash"])[0]


def test_middle_line_not_json_names_its_line(log):
    path, _ = log
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"{not json"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(StoreDamaged, match="line 2"):
        audit.read_entries(path)


def test_missing_log_reads_as_empty(tmp_path):
    path = tmp_path / "audit.jsonl"
    assert audit.read_entries(path) == []
    assert audit.last_entry(path) is None
    assert audit.contains_tail(path, audit.new_entry(None, "fit", {})) is False
    assert audit.verify_file(path) == []


def test_last_entry_reads_the_tail_of_a_long_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit.append(path, audit.new_entry(None, "ingest", {"n_records": 1}))
    ids = [f"r{i}" for i in range(3000)]  # a ~200 KB line, many tail blocks
    big = audit.new_entry(audit.last_entry(path), "forget", forget_details(*ids))
    audit.append(path, big)
    assert audit.last_entry(path) == big
    assert audit.contains_tail(path, big)


def test_contains_tail_makes_append_idempotent(log):
    path, entries = log
    assert audit.contains_tail(path, entries[-1])
    assert not audit.contains_tail(path, entries[-2])
    following = audit.new_entry(entries[-1], "fit", {"n_records": 3})
    assert not audit.contains_tail(path, following)
    audit.append(path, following)
    assert audit.contains_tail(path, following)


def test_append_refuses_an_entry_that_does_not_follow(log):
    path, entries = log
    stale = audit.new_entry(entries[2], "fit", {})
    with pytest.raises(ValueError, match="does not follow"):
        audit.append(path, stale)
    altered = dict(audit.new_entry(entries[-1], "fit", {}))
    altered["action"] = "forget"
    with pytest.raises(ValueError, match="altered"):
        audit.append(path, altered)
    assert audit.read_entries(path) == entries


def test_append_drops_a_torn_tail_left_by_a_crash(log):
    path, entries = log
    following = audit.new_entry(entries[-1], "fit", {"n_records": 3})
    with open(path, "ab") as handle:
        handle.write(audit.entry_line(following)[:30])
    assert audit.last_entry(path) == entries[-1]
    audit.append(path, following)
    assert audit.read_entries(path) == entries + [following]
    assert audit.verify_file(path) == []


def test_append_completes_an_entry_missing_its_newline(log):
    path, entries = log
    path.write_bytes(path.read_bytes()[:-1])
    assert audit.contains_tail(path, entries[-1])
    following = audit.new_entry(audit.last_entry(path), "fit", {})
    audit.append(path, following)
    assert audit.read_entries(path) == entries + [following]
