import hashlib
import hmac
import os
import stat
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from erase_cli import audit
from erase_cli.errors import InvalidParameter, StoreDamaged

SECRET = b"\x01" * 32
KEY = b"\x02" * 32  # the store key that signs the chain
T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


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


def write_log(path, n=5, *, key=None, start=0):
    """Append entries seq start..n-1 (ingest, fit, then forgets), hashed with ``key``."""
    entries = []
    for i in range(start, n):
        action = ("ingest", "fit", "forget")[min(i, 2)]
        details = forget_details(f"rec-{i}") if action == "forget" else {"n_records": 10 + i}
        entry = audit.new_entry(audit.last_entry(path), action, details, now=T0 + timedelta(seconds=i), key=key)
        audit.append(path, entry, key=key)
        entries.append(entry)
    return entries


def rehash(entries, key=None):
    """What an attacker does after deleting entries: renumber, relink and re-hash the chain."""
    out, prev = [], None
    for entry in entries:
        body = {name: value for name, value in entry.items() if name != "hash"}
        body["seq"] = 0 if prev is None else prev["seq"] + 1
        body["prev"] = audit.GENESIS if prev is None else prev["hash"]
        body["hash"] = audit.entry_hash(body, key)
        out.append(body)
        prev = body
    return out


def rewrite(path, entries):
    path.write_bytes(b"".join(audit.entry_line(entry) for entry in entries))


@pytest.fixture
def log(tmp_path):
    """A legacy (plain sha256) chain."""
    path = tmp_path / "audit.jsonl"
    return path, write_log(path)


@pytest.fixture
def keyed_log(tmp_path):
    path = tmp_path / "audit.jsonl"
    return path, write_log(path, key=KEY)


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
    assert audit.verify_chain(audit.read_entries(path)) == []


def test_time_is_utc_with_z():
    eastern = timezone(timedelta(hours=-5))
    entry = audit.new_entry(None, "fit", {}, now=datetime(2026, 1, 2, 7, 30, tzinfo=eastern))
    assert entry["time"] == "2026-01-02T12:30:00.000000Z"
    now = audit.new_entry(None, "fit", {})["time"]
    parsed = datetime.strptime(now, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed - datetime.now(UTC)) < timedelta(minutes=1)
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
    assert audit.verify_chain(audit.read_entries(path)) == ["entry seq 2 is missing (removed)"]


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
    with pytest.raises(StoreDamaged, match="line 5 is not valid JSON .*restore the store from a backup"):
        audit.read_entries(path)


def test_removed_last_entry_needs_the_stores_head(log):
    path, entries = log
    rewrite(path, entries[:-1])
    # A cut at the end leaves a valid chain; only the hash the store recorded reveals it.
    assert audit.verify_chain(audit.read_entries(path)) == []
    problems = audit.verify_chain(audit.read_entries(path), head=entries[-1]["hash"])
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
    assert audit.verify_chain(audit.read_entries(path)) == []
    audit.check_head(path, None)


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
    before = path.read_bytes()
    # The log ends elsewhere than the entry's predecessor: it was changed, so it is damage.
    stale = audit.new_entry(entries[2], "fit", {})
    with pytest.raises(StoreDamaged, match="ends at entry seq 4, which entry seq 3 does not follow"):
        audit.append(path, stale)
    forked = audit.new_entry({"seq": 4, "hash": "e" * 64}, "fit", {})
    with pytest.raises(StoreDamaged, match="does not follow"):
        audit.append(path, forked)
    altered = dict(audit.new_entry(entries[-1], "fit", {}))
    altered["action"] = "forget"
    with pytest.raises(ValueError, match="altered") as raised:
        audit.append(path, altered)
    assert not isinstance(raised.value, StoreDamaged)
    assert path.read_bytes() == before


def test_append_to_a_missing_log_needs_the_first_entry(tmp_path):
    path = tmp_path / "audit.jsonl"
    second = audit.new_entry({"seq": 0, "hash": "e" * 64}, "fit", {})
    with pytest.raises(StoreDamaged, match="is missing, which entry seq 1 does not follow"):
        audit.append(path, second)
    assert not path.exists()
    path.write_bytes(b"")
    with pytest.raises(StoreDamaged, match="is empty, which entry seq 1 does not follow"):
        audit.append(path, second)
    assert path.read_bytes() == b""


def test_append_drops_a_torn_tail_left_by_a_crash(log):
    path, entries = log
    following = audit.new_entry(entries[-1], "fit", {"n_records": 3})
    with open(path, "ab") as handle:
        handle.write(audit.entry_line(following)[:30])
    assert audit.last_entry(path) == entries[-1]
    audit.append(path, following)
    assert audit.read_entries(path) == entries + [following]
    assert audit.verify_chain(audit.read_entries(path)) == []


def test_append_completes_an_entry_missing_its_newline(log):
    path, entries = log
    path.write_bytes(path.read_bytes()[:-1])
    assert audit.last_entry(path) == entries[-1]
    # Not complete yet: the journal appends it again, which rewrites the line whole.
    assert not audit.contains_tail(path, entries[-1])
    following = audit.new_entry(audit.last_entry(path), "fit", {})
    audit.append(path, following)
    assert audit.read_entries(path) == entries + [following]
    assert path.read_bytes() == b"".join(audit.entry_line(entry) for entry in entries + [following])


def test_reappending_an_entry_cut_just_before_its_newline_completes_it(log):
    path, entries = log
    full = path.read_bytes()
    path.write_bytes(full[:-1])
    audit.append(path, entries[-1])
    assert path.read_bytes() == full
    audit.check_head(path, entries[-1]["hash"])


# ---------------------------------------------------------------------------- keyed chain


def test_keyed_hash_is_hmac_sha256_of_the_canonical_body(keyed_log):
    path, entries = keyed_log
    body = {key: value for key, value in entries[2].items() if key != "hash"}
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    assert entries[2]["hash"] == hmac.new(KEY, canonical, hashlib.sha256).hexdigest()
    assert entries[2]["hash"] != hashlib.sha256(canonical).hexdigest()
    assert audit.entry_hash(entries[2], KEY) == entries[2]["hash"]
    with pytest.raises(ValueError, match="audit key is empty"):
        audit.entry_hash(entries[2], b"")


def test_keyed_chain_verifies_only_with_the_right_key(keyed_log):
    path, entries = keyed_log
    assert audit.verify_chain(entries, key=KEY, head=entries[-1]["hash"]) == []
    assert audit.verify_chain(audit.read_entries(path), key=KEY, head=entries[-1]["hash"]) == []
    wrong = audit.verify_chain(audit.read_entries(path), key=b"\x03" * 32)
    assert len(wrong) == 5
    assert wrong[0] == (
        "line 1 (seq 0, ingest): does not match its keyed hash: edited or re-hashed without the store key"
    )
    # Read as a legacy chain, keyed hashes are not sha256 ones.
    legacy = audit.verify_chain(entries)
    assert len(legacy) == 5 and all("edited, its content does not match its hash" in p for p in legacy)


def test_append_checks_the_hash_with_the_key(tmp_path):
    path = tmp_path / "audit.jsonl"
    entry = audit.new_entry(None, "ingest", {"n_records": 1}, key=KEY)
    with pytest.raises(ValueError, match="altered"):
        audit.append(path, entry)  # checked as a plain sha256 entry
    with pytest.raises(ValueError, match="altered"):
        audit.append(path, entry, key=b"\x03" * 32)
    assert not path.exists()
    audit.append(path, entry, key=KEY)
    assert audit.read_entries(path) == [entry]


def test_deleting_a_forget_entry_and_rehashing_is_detected_with_the_key(keyed_log):
    """The attack: drop a forget entry, renumber and re-hash with sha256 (or any guessed key),
    point the store's head at the new end. A plain chain cannot tell; the keyed one can."""
    path, entries = keyed_log
    assert entries[3]["action"] == "forget"
    forged = rehash(entries[:3] + entries[4:])
    rewrite(path, forged)
    head = forged[-1]["hash"]
    assert audit.verify_chain(audit.read_entries(path), head=head) == []  # what a sha256 chain would have shown
    problems = audit.verify_chain(audit.read_entries(path), key=KEY, head=head)
    assert problems == [
        f"line {n} (seq {n - 1}, {forged[n - 1]['action']}): does not match its keyed hash: "
        "edited or re-hashed without the store key"
        for n in range(1, 5)
    ]
    guessed = rehash(entries[:3] + entries[4:], key=b"guess")
    assert len(audit.verify_chain(guessed, key=KEY, head=guessed[-1]["hash"])) == 4
    # Keeping the untouched prefix as it was still leaves the re-hashed part unverifiable.
    moved = {name: value for name, value in entries[4].items() if name != "hash"}
    moved.update(seq=3, prev=entries[2]["hash"])
    moved["hash"] = audit.entry_hash(moved)
    spliced = entries[:3] + [moved]
    assert audit.verify_chain(spliced, key=KEY, head=spliced[-1]["hash"]) == [
        "line 4 (seq 3, forget): does not match its keyed hash: edited or re-hashed without the store key"
    ]


def test_keyed_from_checks_legacy_history_with_sha256(tmp_path):
    path = tmp_path / "audit.jsonl"
    legacy = write_log(path, 3)  # seq 0-2 written before the upgrade
    keyed = write_log(path, 6, key=KEY, start=3)  # seq 3-5 after it
    entries = legacy + keyed
    assert audit.read_entries(path) == entries
    assert entries[3]["prev"] == entries[2]["hash"]
    assert audit.verify_chain(audit.read_entries(path), key=KEY, keyed_from=3, head=entries[-1]["hash"]) == []

    # Asking for keys from the start fails exactly the legacy entries, and the other way round.
    too_early = audit.verify_chain(entries, key=KEY, keyed_from=0)
    assert [p.split(":")[0] for p in too_early] == [
        "line 1 (seq 0, ingest)",
        "line 2 (seq 1, fit)",
        "line 3 (seq 2, forget)",
    ]
    too_late = audit.verify_chain(entries, key=KEY, keyed_from=5)
    assert [p.split(":")[0] for p in too_late] == ["line 4 (seq 3, forget)", "line 5 (seq 4, forget)"]
    assert all("edited, its content does not match its hash" in p for p in too_late)

    # An edit in the legacy section is still caught, re-hashed or not.
    edited = [dict(entry) for entry in entries]
    edited[1]["n_records"] = 999
    problems = audit.verify_chain(edited, key=KEY, keyed_from=3)
    assert problems == ["line 2 (seq 1, fit): edited, its content does not match its hash"]
    edited[1]["hash"] = audit.entry_hash(edited[1])
    problems = audit.verify_chain(edited, key=KEY, keyed_from=3)
    assert problems == [
        "line 3 (seq 2): prev does not match the hash of line 2; "
        "the chain was rewritten (an entry edited and re-hashed, or replaced)"
    ]
    # A keyed entry re-hashed with sha256 does not pass for legacy.
    edited = [dict(entry) for entry in entries]
    edited[4]["elapsed_ms"] = 1.0
    edited[4]["hash"] = audit.entry_hash(edited[4])
    problems = audit.verify_chain(edited, key=KEY, keyed_from=3)
    assert problems[0].startswith("line 5 (seq 4, forget): does not match its keyed hash")
    with pytest.raises(ValueError, match="keyed_from"):
        audit.verify_chain(entries, key=KEY, keyed_from=-1)


def test_expect_head_must_be_in_the_chain(keyed_log):
    path, entries = keyed_log
    recorded = entries[2]["hash"]
    assert audit.verify_chain(audit.read_entries(path), key=KEY, expect_head=recorded) == []
    assert audit.verify_chain(audit.read_entries(path), key=KEY, expect_head=entries[-1]["hash"]) == []
    # Everything from the recorded entry on was rebuilt: the store's own head is consistent.
    forged = entries[:2] + rehash(entries[:2] + entries[3:], key=KEY)[2:]
    assert audit.verify_chain(forged, key=KEY, head=forged[-1]["hash"]) == []
    problems = audit.verify_chain(forged, key=KEY, head=forged[-1]["hash"], expect_head=recorded)
    assert problems == [
        f"no entry has the hash recorded earlier ({recorded[:12]}...): the history up to that "
        "recorded entry was rewritten or removed"
    ]
    assert len(audit.verify_chain([], expect_head=recorded)) == 1
    assert "was rewritten or removed" in audit.verify_chain(entries[:2], key=KEY, expect_head=recorded)[0]
    with pytest.raises(InvalidParameter, match="not an audit entry hash"):
        audit.verify_chain(entries, key=KEY, expect_head=recorded[:12])


# ---------------------------------------------------------------------------- check_head


def test_check_head_accepts_the_log_the_store_recorded(keyed_log):
    path, entries = keyed_log
    assert audit.check_head(path, entries[-1]["hash"]) is None
    (path.parent / "empty.jsonl").write_bytes(b"")
    assert audit.check_head(path.parent / "empty.jsonl", None) is None
    assert audit.check_head(path.parent / "absent.jsonl", None) is None


def test_check_head_refuses_a_missing_or_emptied_log(keyed_log):
    path, entries = keyed_log
    head = entries[-1]["hash"]
    path.unlink()
    with pytest.raises(StoreDamaged, match="is missing but the store records audit history") as raised:
        audit.check_head(path, head)
    assert "restore audit.jsonl from a backup; 'erase log --verify' shows the problems" in str(raised.value)
    path.write_bytes(b"")
    with pytest.raises(StoreDamaged, match="is empty but the store records audit history"):
        audit.check_head(path, head)


def test_check_head_refuses_a_shortened_or_extended_log(keyed_log):
    path, entries = keyed_log
    rewrite(path, entries[:-1])
    with pytest.raises(StoreDamaged, match="ends at entry seq 3, not at the store's last recorded entry"):
        audit.check_head(path, entries[-1]["hash"])
    rewrite(path, entries)
    with pytest.raises(StoreDamaged, match="ends at entry seq 4.*shortened, or entries were added"):
        audit.check_head(path, entries[2]["hash"])


def test_check_head_refuses_a_torn_or_unparseable_tail(keyed_log):
    path, entries = keyed_log
    head = entries[-1]["hash"]
    full = path.read_bytes()
    following = audit.new_entry(entries[-1], "fit", {}, key=KEY)
    path.write_bytes(full + audit.entry_line(following)[:20])
    with pytest.raises(StoreDamaged, match="ends with an incomplete line"):
        audit.check_head(path, head)
    path.write_bytes(full[:-1])  # even a whole entry missing its newline
    with pytest.raises(StoreDamaged, match="ends with an incomplete line"):
        audit.check_head(path, head)
    path.write_bytes(full + b"{not json\n")
    with pytest.raises(StoreDamaged, match="last line of audit log .* is not valid JSON"):
        audit.check_head(path, head)


def test_check_head_refuses_entries_the_store_does_not_record(keyed_log):
    path, _ = keyed_log
    with pytest.raises(StoreDamaged, match="has entries but the store records none"):
        audit.check_head(path, None)
    path.write_bytes(b'{"seq":0')
    with pytest.raises(StoreDamaged, match="has entries but the store records none"):
        audit.check_head(path, None)


def test_check_head_reads_only_the_tail(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    entries = write_log(path, 3, key=KEY)
    # Megabytes of earlier history that check_head must not read (nor parse).
    path.write_bytes(b"x" * (4 << 20) + b"\n" + path.read_bytes())
    read = []
    real_pread = os.pread

    def no_read(*args):
        raise AssertionError("check_head read the file from its start")

    with monkeypatch.context() as patch:
        patch.setattr(audit.os, "pread", lambda fd, n, off: read.append(n) or real_pread(fd, n, off))
        patch.setattr(audit.os, "read", no_read)
        patch.setattr(audit.os, "fdopen", no_read)
        audit.check_head(path, entries[-1]["hash"])
    assert 0 < sum(read) <= 64 * 1024


# ---------------------------------------------------------------------------- torn tails


def test_append_refuses_a_torn_tail_that_is_not_its_own_line(log):
    path, entries = log
    following = audit.new_entry(entries[-1], "fit", {"n_records": 3})
    other = audit.new_entry(entries[-1], "forget", forget_details("x"))
    full = path.read_bytes()
    for torn in (audit.entry_line(other)[:40], b"garbage without newline"):
        assert not audit.entry_line(following).startswith(torn)
        path.write_bytes(full + torn)
        with pytest.raises(StoreDamaged, match="ends with an incomplete line that is not the start"):
            audit.append(path, following)
        assert path.read_bytes() == full + torn


def test_append_refuses_a_torn_own_line_after_the_wrong_predecessor(log):
    path, entries = log
    following = audit.new_entry(entries[-1], "fit", {})
    damaged = b"".join(audit.entry_line(entry) for entry in entries[:-1]) + audit.entry_line(following)[:25]
    path.write_bytes(damaged)
    with pytest.raises(StoreDamaged, match="ends at entry seq 3, which entry seq 5 does not follow"):
        audit.append(path, following)
    assert path.read_bytes() == damaged


def test_append_refuses_a_complete_last_line_that_is_not_json(log):
    path, entries = log
    damaged = path.read_bytes() + b"{edited\n"
    path.write_bytes(damaged)
    with pytest.raises(StoreDamaged, match="is not valid JSON"):
        audit.append(path, audit.new_entry(entries[-1], "fit", {}))
    assert path.read_bytes() == damaged


def test_first_append_cut_by_a_crash_is_completed(tmp_path):
    path = tmp_path / "audit.jsonl"
    first = audit.new_entry(None, "ingest", {"n_records": 1}, key=KEY)
    path.write_bytes(audit.entry_line(first)[:10])
    audit.append(path, first, key=KEY)
    assert path.read_bytes() == audit.entry_line(first)
    audit.check_head(path, first["hash"])


# ---------------------------------------------------------------------------- symbolic links


def test_a_symlinked_log_is_never_followed(tmp_path, keyed_log):
    path, entries = keyed_log
    elsewhere = tmp_path / "elsewhere.jsonl"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    before = elsewhere.read_bytes()
    following = audit.new_entry(entries[-1], "fit", {}, key=KEY)
    calls = [
        lambda: audit.append(path, following, key=KEY),
        lambda: audit.read_entries(path),
        lambda: audit.last_entry(path),
        lambda: audit.contains_tail(path, entries[-1]),
        lambda: audit.check_head(path, entries[-1]["hash"]),
        lambda: audit.check_head(path, None),
    ]
    for call in calls:
        with pytest.raises(StoreDamaged, match="is a symbolic link; erase never follows links"):
            call()
    assert elsewhere.read_bytes() == before
    assert path.is_symlink()


def test_a_dangling_symlink_is_not_created_through(tmp_path):
    path = tmp_path / "audit.jsonl"
    target = tmp_path / "target.jsonl"
    path.symlink_to(target)
    with pytest.raises(StoreDamaged, match="is a symbolic link"):
        audit.append(path, audit.new_entry(None, "ingest", {}, key=KEY), key=KEY)
    assert not target.exists()
    with pytest.raises(StoreDamaged, match="is a symbolic link"):
        audit.read_entries(path)


def test_a_log_that_is_not_a_regular_file_is_refused(tmp_path):
    path = tmp_path / "audit.jsonl"
    os.mkfifo(path)
    with pytest.raises(StoreDamaged, match="is not a regular file"):
        audit.check_head(path, None)
    with pytest.raises(StoreDamaged, match="is not a regular file"):
        audit.read_entries(path)
