"""The command-line contract (SPEC 3): exit codes, one-line errors that name the fix, --json error
objects, flag > env > default, bad ingest input leaves the store byte-for-byte unchanged, help
text for every command, and a start-up path that never imports the heavy model libraries."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import typer
from helpers import ROOT, make_records, snapshot, write_jsonl
from typer.testing import CliRunner

from erase_cli.cli import app

runner = CliRunner()


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


@pytest.fixture
def store(tmp_path):
    """A store with 30 BYO-vector records, fitted."""
    path = tmp_path / "erase-store"
    data = write_jsonl(tmp_path / "data.jsonl", make_records(30, dim=8))
    assert run("ingest", str(data), "--vector-field", "vec", "--store", str(path)).exit_code == 0
    assert run("fit", "-k", "3", "--store", str(path)).exit_code == 0
    return path


def vec_line(rid, vec, **extra) -> str:
    return json.dumps({"id": rid, "input": f"in {rid}", "target": "t", "vec": vec, **extra})


GOOD = [0.5] * 8
BAD_INGEST = {
    "malformed JSON": ('{"id": "a", "input": "x", "target": "t", "vec": ' + str(GOOD) + "}\n{oops\n", "bad.jsonl:2"),
    "missing input": (json.dumps({"id": "b", "target": "t", "vec": GOOD}) + "\n", "bad.jsonl:1"),
    "empty target": (json.dumps({"id": "c", "input": "x", "target": "", "vec": GOOD}) + "\n", "bad.jsonl:1"),
    "not an object": ("[1, 2, 3]\n", "bad.jsonl:1"),
    "duplicate 1 and '1'": (vec_line(1, GOOD) + "\n" + vec_line("1", GOOD) + "\n", "bad.jsonl:2"),
    "duplicate of a stored id": (vec_line("rec-000003-ID", GOOD) + "\n", "rec-000003-ID"),
    "wrong vector length": (vec_line("d", [0.5] * 5) + "\n", "dimension"),
    "NaN in vector": ('{"id": "e", "input": "x", "target": "t", "vec": [NaN, 1, 1, 1, 1, 1, 1, 1]}\n', "bad.jsonl:1"),
    "Infinity in vector": (
        '{"id": "e", "input": "x", "target": "t", "vec": [Infinity, 1, 1, 1, 1, 1, 1, 1]}\n',
        "bad.jsonl:1",
    ),
    "zero vector": (vec_line("f", [0.0] * 8) + "\n", "bad.jsonl:1"),
    "empty file": ("", "bad.jsonl"),
}


@pytest.mark.parametrize("case", sorted(BAD_INGEST))
def test_bad_ingest_input_is_one_line_exit_1_and_store_unchanged(case, store, tmp_path):
    content, must_mention = BAD_INGEST[case]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    before = snapshot(store)
    result = run("ingest", str(bad), "--vector-field", "vec", "--append", "--store", str(store))
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert must_mention in lines[0]
    assert "Traceback" not in result.output
    assert snapshot(store) == before


def test_non_utf8_and_missing_file(store, tmp_path):
    before = snapshot(store)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "x", "input": "caf\xe9", "target": "t", "vec": [1,1,1,1,1,1,1,1]}\n')
    r = run("ingest", str(bad), "--vector-field", "vec", "--append", "--store", str(store))
    assert r.exit_code == 1 and "bad.jsonl:1" in r.stderr and "UTF-8" in r.stderr
    r = run("ingest", str(tmp_path / "nope.jsonl"), "--append", "--store", str(store))
    assert r.exit_code == 1 and "nope.jsonl" in r.stderr
    assert snapshot(store) == before


def test_bad_input_on_a_new_store_creates_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    r = run("ingest", str(bad), "--vector-field", "vec", "--store", str(tmp_path / "new"))
    assert r.exit_code == 1 and not (tmp_path / "new").exists()


def test_skip_invalid_ingests_the_valid_lines(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(vec_line("a", GOOD) + "\n{oops\n" + vec_line("b", [0.0] * 8) + "\n" + vec_line("c", GOOD) + "\n")
    r = run("ingest", str(path), "--vector-field", "vec", "--skip-invalid", "--json", "--store", str(tmp_path / "s"))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["ingested"] == 2 and [s["line"] for s in out["skipped_invalid"]] == [2, 3]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-k", "0"], "k"),
        (["--eps", "0"], "eps"),
        (["--eps", "-1"], "eps"),
        (["--dim", "99"], "dim"),
        (["--max-iter", "0"], "max"),
        (["--seed", "-3"], "seed"),
    ],
)
def test_out_of_range_fit_parameters_are_domain_errors(args, needle, store):
    before = snapshot(store)
    r = run("fit", *args, "--store", str(store), "--json")
    assert r.exit_code == 1, r.output
    err = json.loads(r.stdout)["error"]
    assert err["kind"] == "invalid_parameter" and needle in err["message"]
    assert snapshot(store) == before


def _error_classes():
    from erase_cli import errors

    return [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.EraseError)]


def test_every_error_kind_is_snake_case():
    kinds = [c.kind for c in _error_classes()]
    assert len(kinds) > 10 and len(set(kinds)) == len(kinds)
    for kind in kinds:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", kind), kind


def test_usage_errors_exit_2(store):
    assert run("fit", "--bogus", "--store", str(store)).exit_code == 2
    assert run("fit", "-k", "many", "--store", str(store)).exit_code == 2


def test_missing_store_json_error(tmp_path):
    r = run("status", "--store", str(tmp_path / "nowhere"), "--json")
    assert r.exit_code == 1
    err = json.loads(r.stdout)["error"]
    assert err["kind"] == "store_missing" and "erase ingest" in err["message"]


def test_store_flag_beats_env_which_beats_default(store, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASE_STORE", str(store))
    assert json.loads(run("status", "--json").stdout)["records"] == 30
    r = run("status", "--json", "--store", str(tmp_path / "other"))
    assert r.exit_code == 1 and json.loads(r.stdout)["error"]["kind"] == "store_missing"


def test_forget_unknown_ids_do_not_block_known_ones(store):
    r = run("forget", "rec-000001-ID", "ghost", "--store", str(store), "--json")
    assert r.exit_code == 3
    report = json.loads(r.stdout)
    assert [i["status"] for i in report["ids"]] == ["forgotten", "not_found"]
    r = run("forget", "rec-000001-ID", "ghost", "--missing-ok", "--store", str(store), "--json")
    assert r.exit_code == 0
    assert [i["status"] for i in json.loads(r.stdout)["ids"]] == ["already_forgotten", "not_found"]


def test_forget_from_stdin_and_option_like_ids(store):
    r = run("forget", "--from-file", "-", "--store", str(store), "--json", input="rec-000002-ID\nrec-000004-ID\n")
    assert r.exit_code == 0, r.output
    assert [i["id"] for i in json.loads(r.stdout)["ids"]] == ["rec-000002-ID", "rec-000004-ID"]
    r = run("forget", "--store", str(store), "--missing-ok", "--json", "--", "-17")
    assert r.exit_code == 0 and json.loads(r.stdout)["ids"] == [{"id": "-17", "status": "not_found"}]


def test_forget_report_shape(store):
    r = run("forget", "rec-000005-ID", "--store", str(store), "--json")
    batch = json.loads(r.stdout)["batch"]
    assert batch["action"] in ("none", "replace_example", "refit")
    assert isinstance(batch["prompt_changed"], bool) and batch["elapsed_ms"] > 0
    assert all(set(c) == {"iteration", "cluster"} for c in batch["crossings"])
    assert run("verify", "--store", str(store)).exit_code == 0


def test_ask_and_verify_need_a_fresh_fit(store, tmp_path):
    write_jsonl(tmp_path / "more.jsonl", make_records(3, dim=8, prefix="new"))
    assert (
        run(
            "ingest", str(tmp_path / "more.jsonl"), "--vector-field", "vec", "--append", "--store", str(store)
        ).exit_code
        == 0
    )
    r = run("verify", "--store", str(store), "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["error"]["kind"] == "stale_fit"
    r = run("ask", "hello", "--store", str(store), "--json")
    assert r.exit_code == 1 and "erase fit" in json.loads(r.stdout)["error"]["message"]


# Every command the app registers, so a new command cannot skip its --help, --json or README line.
COMMANDS = sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_is_in_the_readme(command):
    r = run(command, "--help")
    assert r.exit_code == 0 and "--json" in r.stdout and len(r.stdout) > 200
    assert f"erase {command}" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("argv", [["--help"], ["status"], ["forget", "x"]])
def test_fast_commands_never_import_model_libraries(argv, store):
    code = (
        "import sys\nfrom erase_cli.cli import app\n"
        f"try:\n    app({argv + ['--store', str(store)] if argv != ['--help'] else argv!r})\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'llama_cpp') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_the_core_returns_typed_reports_that_the_cli_prints_as_they_are(store, tmp_path):
    """verify, recover, log and export return reports (reports.py); --json prints to_json(), in
    its documented key order, and log's NDJSON is the entries and then verdict()."""
    from erase_cli import service
    from erase_cli.reports import ExportReport, LogReport, RecoverReport, VerifyReport

    verified = service.verify(store)
    assert isinstance(verified, VerifyReport)
    assert list(verified.to_json()) == ["identical", "differences", "n_records", "state_digest", "elapsed_ms"]
    printed = json.loads(run("verify", "--store", str(store), "--json").stdout)
    assert list(printed) == list(verified.to_json()) and printed["state_digest"] == verified.state_digest

    recovered = service.recover(store)
    assert isinstance(recovered, RecoverReport) and recovered.recovered is None
    assert json.loads(run("recover", "--store", str(store), "--json").stdout) == recovered.to_json()

    exported = service.export(store, tmp_path / "a.jsonl")
    assert isinstance(exported, ExportReport) and exported.records == 30
    printed = json.loads(run("export", "-o", str(tmp_path / "b.jsonl"), "--store", str(store), "--json").stdout)
    assert (
        list(printed)
        == list(exported.to_json())
        == [
            "store",
            "output",
            "records",
            "vectors",
            "bytes",
            "audit_hash",
            "warnings",
            "elapsed_ms",
        ]
    )

    logged = service.log(store, check=True)
    assert isinstance(logged, LogReport) and logged.valid is True
    lines = [json.loads(x) for x in run("log", "--verify", "--store", str(store), "--json").stdout.splitlines()]
    assert lines == logged.entries + [logged.verdict()]
    assert logged.verdict() == {"verify": {"valid": True, "problems": [], "entries": 4, "head": logged.head}}
