"""`erase log`: one readable line per entry, -n / --since / --action choose what is shown (never
what is verified), --verify prints the verdict (and the entries with --show), --json shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest
from helpers import audit_lines, build_store, erase, make_records, refused

from erase_cli.errors import InvalidParameter
from erase_cli.service import parse_since


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A store whose log holds ingest, fit, forget, forget, export (seq 0..4)."""
    tmp = tmp_path_factory.mktemp("log")
    store = tmp / "store"
    records = make_records(30, dim=8)
    build_store(store, records, tmp)
    for batch in ([records[1].id, records[2].id], [records[5].id]):
        r = erase("forget", *batch, "--store", str(store))
        assert r.returncode == 0, r.stderr
    r = erase("export", "--output", str(tmp / "e.jsonl"), "--store", str(store))
    assert r.returncode == 0, r.stderr
    return store


def ok(*args: str) -> str:
    r = erase(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def test_one_readable_line_per_entry(logged):
    entries = audit_lines(logged)
    lines = ok("log", "--store", str(logged)).splitlines()
    assert len(lines) == len(entries) == 5
    for line, e in zip(lines, entries):
        assert line.split()[:2] == [str(e["seq"]), e["time"][:10]]
        assert e["action"] in line and line.endswith(f"hash {e['hash'][:12]}")
        assert e["prev"] not in line  # a line is a summary, not the raw entry
    ingest, fit, forget, _, export = lines
    assert "records +30" in ingest
    assert "k 4" in fit and f"prompt none->{entries[1]['prompt_digest_after'][:8]}" in fit
    assert "ids 2" in forget and "crossings" in forget
    before, after = entries[2]["prompt_digest_before"], entries[2]["prompt_digest_after"]
    assert (f"prompt {before[:8]}->{after[:8]}" if before != after else f"prompt {after[:8]} (unchanged)") in forget
    assert "records 27" in export and "without vectors" in export
    assert not any(len(line) > 200 for line in lines)


def test_last_n_since_and_action_choose_what_is_shown(logged):
    seqs = lambda out: [json.loads(x)["seq"] for x in out.splitlines()]  # noqa: E731
    s = str(logged)
    assert seqs(ok("log", "-n", "2", "--store", s, "--json")) == [3, 4]
    assert seqs(ok("log", "--action", "forget", "--action", "fit", "--store", s, "--json")) == [1, 2, 3]
    assert seqs(ok("log", "--action", "forget", "-n", "1", "--store", s, "--json")) == [3]
    assert seqs(ok("log", "--since", "2000-01-01", "--store", s, "--json")) == [0, 1, 2, 3, 4]
    assert seqs(ok("log", "--since", "2999-01-01T00:00:00Z", "--store", s, "--json")) == []
    third = audit_lines(logged)[3]["time"]
    assert seqs(ok("log", "--since", third, "--store", s, "--json")) == [3, 4]
    r = erase("log", "--since", "2999-01-01", "--store", s)
    assert r.returncode == 0 and r.stdout == "" and "0 of 5 entries shown" in r.stderr


@pytest.mark.parametrize(
    "args, mentions",
    [
        (["--since", "last tuesday"], ["--since", "ISO"]),
        (["--action", "delete"], ["--action", "forget", "export"]),
        (["-n", "-1"], ["-n"]),
        (["--show"], ["--show", "--verify"]),
    ],
)
def test_bad_filters_are_one_line_errors(logged, args, mentions):
    refused(["log", *args, "--store", str(logged)], logged, kind=InvalidParameter.kind, mentions=mentions)


def test_verify_prints_the_verdict_and_with_show_the_entries(logged):
    out = ok("log", "--verify", "--store", str(logged))
    assert out.splitlines() == [f"audit chain valid: 5 entries, head {audit_lines(logged)[-1]['hash'][:12]}"]
    out = ok("log", "--verify", "--show", "-n", "2", "--store", str(logged)).splitlines()
    assert len(out) == 3 and "forget" in out[0] and "export" in out[1] and "valid" in out[2]


def test_verify_json_is_entries_then_the_verdict(logged):
    lines = [json.loads(x) for x in ok("log", "--verify", "-n", "1", "--store", str(logged), "--json").splitlines()]
    assert [e["action"] for e in lines[:-1]] == ["export"]
    assert lines[-1] == {
        "verify": {"valid": True, "problems": [], "entries": 5, "head": audit_lines(logged)[-1]["hash"]}
    }


def test_head_ignores_the_filters(logged):
    head = audit_lines(logged)[-1]["hash"]
    assert ok("log", "--head", "--action", "fit", "-n", "1", "--store", str(logged)).strip() == head
    assert json.loads(ok("log", "--head", "--store", str(logged), "--json")) == {"head": head}


def test_filters_never_narrow_verification(tmp_path):
    """An edited first entry is reported even when only the newest entry is shown."""
    store = tmp_path / "store"
    build_store(store, make_records(12, dim=8), tmp_path)
    log = store / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    first = orjson.loads(lines[0])
    first["n_added"] += 1
    log.write_bytes(orjson.dumps(first, option=orjson.OPT_SORT_KEYS) + b"\n" + b"".join(lines[1:]))
    r = erase("log", "--verify", "-n", "1", "--action", "fit", "--store", str(store))
    assert r.returncode == 1 and "BROKEN" in r.stdout
    assert "line 1 (seq 0, ingest): does not match its keyed hash" in r.stdout
    assert "fit" not in r.stdout.split("BROKEN")[0]  # no entries without --show
    r = erase("log", "--verify", "-n", "1", "--store", str(store), "--json")
    verdict = json.loads(r.stdout.splitlines()[-1])["verify"]
    assert r.returncode == 1 and verdict["valid"] is False and verdict["entries"] == 2


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-01-31", datetime(2026, 1, 31, tzinfo=UTC)),
        ("2026-01-31T09:30", datetime(2026, 1, 31, 9, 30, tzinfo=UTC)),
        ("2026-01-31 09:30:15Z", datetime(2026, 1, 31, 9, 30, 15, tzinfo=UTC)),
        ("2026-01-31T09:30:00+02:00", datetime(2026, 1, 31, 7, 30, tzinfo=UTC)),
    ],
)
def test_since_is_utc_unless_it_says_otherwise(text, expected):
    got = parse_since(text)
    assert got == expected and got.utcoffset().total_seconds() == 0


def test_a_line_that_does_not_parse_is_damage_with_a_fix(tmp_path):
    """--verify cannot read past a line that is not JSON: the error names the line and the fix
    (it once sent the operator to 'erase log --verify', the command that gave it)."""
    store = tmp_path / "store"
    build_store(store, make_records(12, dim=8), tmp_path)
    log = store / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0] + b"{oops\n")
    for args in (["log"], ["log", "--verify"]):
        msg = refused([*args, "--store", str(store)], store, kind="store_damaged", mentions=["line 2", "backup"])
        assert "erase log" not in msg
