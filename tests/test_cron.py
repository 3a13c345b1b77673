"""erase as a cron job and a CI check would use it (issue 9), through the real console script:
exit 3 for unknown ids after the rest of the batch is applied, an empty id list as a successful
no-op, ids never stripped (a hint instead), whitespace refused at ingest, --redact-ids, --version,
usage errors as JSON, and an ingest that embeds without blocking a forget."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from helpers import (
    audit_lines,
    build_store,
    clean_env,
    erase,
    erase_popen,
    make_records,
    refused,
    snapshot,
    write_jsonl,
)

from erase_cli import service
from erase_cli.errors import InvalidInput, StoreChanged


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store"
    build_store(path, make_records(30, dim=8), tmp_path)
    return path


def statuses(stdout: str) -> dict[str, str]:
    return {item["id"]: item["status"] for item in json.loads(stdout)["ids"]}


# --------------------------------------------------------------------------- forget exit codes


def test_unknown_ids_exit_3_after_the_known_ones_are_forgotten(store):
    r = erase("forget", "rec-000001-ID", "ghost", "--store", str(store), "--json")
    assert r.returncode == 3, r.stderr
    assert statuses(r.stdout) == {"rec-000001-ID": "forgotten", "ghost": "not_found"}
    assert "--missing-ok" in r.stderr and "Traceback" not in r.stderr
    assert [e["action"] for e in audit_lines(store)][-1] == "forget"
    # The known id really went: a retry sees it already forgotten.
    r = erase("forget", "rec-000001-ID", "ghost", "--missing-ok", "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    assert statuses(r.stdout) == {"rec-000001-ID": "already_forgotten", "ghost": "not_found"}
    # A dry run with an unknown id says so the same way, and without ids that are unknown exits 0.
    assert erase("forget", "ghost", "--dry-run", "--store", str(store)).returncode == 3
    assert erase("forget", "rec-000002-ID", "--dry-run", "--store", str(store)).returncode == 0


def test_a_real_failure_still_exits_1(store, tmp_path):
    refused(
        ["forget", "ghost", "--store", str(tmp_path / "nowhere")], None, kind="store_missing", mentions=["erase ingest"]
    )


@pytest.mark.parametrize("body", ["", "\n \n\r\n"])
def test_an_empty_id_file_is_a_successful_no_op(store, tmp_path, body):
    ids = tmp_path / "ids.txt"
    ids.write_text(body)
    before, entries = snapshot(store), len(audit_lines(store))
    r = erase("forget", "--from-file", str(ids), "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ids"] == []
    assert report["batch"]["n_forgotten"] == 0 and report["batch"]["action"] == "none"
    assert report["batch"]["prompt_changed"] is False and report["batch"]["purged"] == []
    r = erase("forget", "--from-file", "-", "--store", str(store), input="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "no ids to forget: nothing changed"
    assert snapshot(store) == before and len(audit_lines(store)) == entries


def test_an_empty_id_file_still_needs_a_store(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("")
    refused(
        ["forget", "--from-file", str(ids), "--store", str(tmp_path / "nowhere")],
        None,
        kind="store_missing",
        mentions=["erase ingest"],
    )


def test_forget_without_any_ids_is_refused(store):
    refused(["forget", "--store", str(store)], store, kind="invalid_input", mentions=["--from-file"])


def test_ids_are_never_stripped_but_a_near_miss_gets_a_hint(store, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text(" rec-000003-ID\nrec-000004-ID \t\nghost \n")
    before = snapshot(store)
    r = erase("forget", "--from-file", str(ids), "--store", str(store), "--json", "--dry-run")
    assert r.returncode == 3, r.stderr
    items = {item["id"]: item for item in json.loads(r.stdout)["ids"]}
    assert set(items) == {" rec-000003-ID", "rec-000004-ID \t", "ghost "}
    assert all(item["status"] == "not_found" for item in items.values())
    assert "whitespace" in items[" rec-000003-ID"]["hint"]
    assert "whitespace" in items["rec-000004-ID \t"]["hint"]
    assert "hint" not in items["ghost "]  # "ghost" is not in the store either
    assert snapshot(store) == before
    r = erase("forget", "--from-file", str(ids), "--store", str(store))
    assert r.returncode == 3
    hints = [ln for ln in r.stderr.splitlines() if ln.startswith("hint")]
    assert len(hints) == 2 and "' rec-000003-ID'" in r.stderr and "whitespace" in hints[0]
    # Nothing was forgotten: the stripped ids are still there.
    r = erase("forget", "rec-000003-ID", "rec-000004-ID", "--dry-run", "--store", str(store), "--json")
    assert set(statuses(r.stdout).values()) == {"would_forget"}


# --------------------------------------------------------------------------- ingest ids


def test_ingest_refuses_ids_with_surrounding_whitespace(store, tmp_path):
    good = {"id": "new-1", "input": "fine", "target": "t", "vec": [0.5] * 8}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "new-2 "}) + "\n")
    msg = refused(
        ["ingest", str(bad), "--vector-field", "vec", "--append", "--store", str(store)],
        store,
        kind="invalid_input",
        mentions=[f"{bad}:2:", "whitespace", "'new-2 '", "remove it"],
    )
    assert "\n" not in msg
    r = erase(
        "ingest", str(bad), "--vector-field", "vec", "--append", "--skip-invalid", "--store", str(store), "--json"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ingested"] == 1 and [s["line"] for s in out["skipped_invalid"]] == [2]
    assert "whitespace" in out["skipped_invalid"][0]["message"]


# --------------------------------------------------------------------------- version, usage errors


def test_version():
    from importlib.metadata import version

    r = erase("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"erase {version('erase-cli')}\n" and r.stderr == ""


@pytest.mark.parametrize(
    "args, mentions",
    [
        (["fit", "--bogus"], ["--bogus", "erase fit --help"]),
        (["fit", "-k", "many"], ["-k", "erase fit --help"]),
        (["ingest"], ["missing argument", "erase ingest --help"]),
        (["forget", "--lock-timeout", "soon"], ["--lock-timeout", "erase forget --help"]),
        (["nosuch"], ["nosuch", "erase --help"]),
        (["--bogus"], ["--bogus", "erase --help"]),
    ],
)
def test_usage_errors_with_json_give_the_json_error_object(args, mentions, store):
    refused(
        [*args, "--store", str(store)] if args[0] != "--bogus" else args, store, code=2, kind="usage", mentions=mentions
    )


def test_usage_errors_without_json_keep_clicks_message(store):
    r = erase("fit", "--bogus", "--store", str(store))
    assert r.returncode == 2 and r.stdout == "" and "--bogus" in r.stderr


# --------------------------------------------------------------------------- ingest and the lock


def text_jsonl(path: Path, ids: list[str]) -> Path:
    """Records without vectors, for the fake embedder."""
    path.write_text("".join(json.dumps({"id": i, "input": f"text of {i}", "target": "t"}) + "\n" for i in ids))
    return path


def test_a_slow_ingest_never_blocks_a_forget(tmp_path):
    store = tmp_path / "store"
    old = [f"old-{i}" for i in range(12)]
    r = erase("ingest", str(text_jsonl(tmp_path / "a.jsonl", old)), "--embedder", "fake:16", "--store", str(store))
    assert r.returncode == 0, r.stderr
    new = [f"new-{i}" for i in range(6)]
    # Six batches of one record, 2 s each: the ingest spends about 12 s embedding.
    slow = erase_popen(
        "ingest",
        str(text_jsonl(tmp_path / "b.jsonl", new)),
        "--embedder",
        "fake:16",
        "--batch-size",
        "1",
        "--append",
        "--store",
        str(store),
        "--json",
        env=clean_env(ERASE_FAKE_EMBED_DELAY="2"),
    )
    # Cron forgets one after another while the ingest runs; each must get the lock within its
    # timeout. An ingest that embedded under the exclusive lock would hold them off for 12 s.
    forgot_while_running = 0
    for rid in old:
        r = erase("forget", rid, "--lock-timeout", "5", "--store", str(store), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["ids"] == [{"id": rid, "status": "forgotten"}]
        if slow.poll() is not None:
            break
        forgot_while_running += 1
    out, err = slow.communicate(timeout=120)
    assert slow.returncode == 0, err
    assert json.loads(out)["ingested"] == len(new)
    assert forgot_while_running >= 3, "the ingest ended too soon to show anything; raise the delay"
    status = json.loads(erase("status", "--store", str(store), "--json").stdout)
    assert status["records"] == len(old) + len(new) - status["forgotten"]


class _DuringEmbedding:
    """Runs `action` while service.ingest embeds (after its shared-lock checks, before its
    exclusive step), the moment at which another command may change the store."""

    def __init__(self, monkeypatch, action):
        real = service._embed
        self.calls = 0

        def embed(*args, **kwargs):
            self.calls += 1
            if self.calls == 1:
                action()
            return real(*args, **kwargs)

        monkeypatch.setattr(service, "_embed", embed)


def _vec_records(ids):
    recs = make_records(len(ids), dim=8)
    return [type(r)(id=i, input=r.input + i, target=r.target, vector=r.vector) for i, r in zip(ids, recs)]


def test_ingest_checks_again_under_the_exclusive_lock(tmp_path, monkeypatch):
    store = tmp_path / "store"
    service.ingest(store, str(write_jsonl(tmp_path / "a.jsonl", _vec_records(["a", "b", "c"]))), vector_field="vec")
    mine = write_jsonl(tmp_path / "mine.jsonl", _vec_records(["x", "y", "z"]))
    theirs = write_jsonl(tmp_path / "theirs.jsonl", _vec_records(["y"]))

    # Another ingest adds "y" while this one embeds: a duplicate, found before writing.
    _DuringEmbedding(monkeypatch, lambda: service.ingest(store, str(theirs), vector_field="vec", append=True))
    before_entries = len(audit_lines(store))
    with pytest.raises(InvalidInput, match="'y' is already in store"):
        service.ingest(store, str(mine), vector_field="vec", append=True)
    assert len(audit_lines(store)) == before_entries + 1  # only the other ingest's entry
    assert service.status(store)["records"] == 4

    # "y" is forgotten while this one embeds: it is skipped as forgotten, never re-learned.
    service.forget(store, ["y"])
    service.ingest(store, str(theirs), vector_field="vec", append=True, allow_relearn=True)
    _DuringEmbedding(monkeypatch, lambda: service.forget(store, ["y"]))
    out = service.ingest(store, str(mine), vector_field="vec", append=True)
    assert out["ingested"] == 2 and out["skipped_forgotten"] == ["y"]
    assert [i["status"] for i in service.forget(store, ["x", "y", "z"], dry_run=True)["ids"]] == [
        "would_forget",
        "already_forgotten",
        "would_forget",
    ]


def test_ingest_refuses_a_store_replaced_while_embedding(tmp_path, monkeypatch):
    store = tmp_path / "store"
    first = write_jsonl(tmp_path / "a.jsonl", _vec_records(["a", "b"]))
    service.ingest(store, str(first), vector_field="vec")

    def replace():
        shutil.rmtree(store)
        service.ingest(store, str(first), vector_field="vec")

    _DuringEmbedding(monkeypatch, replace)
    more = write_jsonl(tmp_path / "more.jsonl", _vec_records(["c"]))
    with pytest.raises(StoreChanged, match="run the ingest again"):
        service.ingest(store, str(more), vector_field="vec", append=True)
    assert service.status(store)["records"] == 2  # the new store, untouched


def test_ingest_refuses_an_incompatible_embedder_before_embedding(tmp_path, monkeypatch):
    store = tmp_path / "store"
    service.ingest(store, str(text_jsonl(tmp_path / "a.jsonl", ["a"])), embedder="fake:16")
    monkeypatch.setenv("ERASE_FAKE_EMBED_DELAY", "30")  # embedding would take 30 s per batch
    t0 = time.monotonic()
    with pytest.raises(InvalidInput, match="dimension 8"):
        service.ingest(store, str(text_jsonl(tmp_path / "b.jsonl", ["b"])), embedder="fake:8", append=True)
    assert time.monotonic() - t0 < 20


# --------------------------------------------------------------------------- --redact-ids


def shown(store: Path, rid: str) -> str:
    """How --redact-ids shows `rid`: the audit log's keyed hash, shortened."""
    from erase_cli import audit

    return "h:" + audit.id_hash((store / "secret").read_bytes(), rid)[:16]


def assert_no_raw(outputs: list[str], raw: list[str]) -> None:
    for out in outputs:
        for rid in raw:
            assert rid not in out, (rid, out)


def test_forget_redacts_every_id_it_prints(store, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("rec-000005-ID\njane.doe@example.org\n rec-000006-ID\n")
    r = erase("forget", "--from-file", str(ids), "--redact-ids", "--store", str(store), "--json")
    assert r.returncode == 3, r.stderr
    items = json.loads(r.stdout)["ids"]
    assert [i["id"] for i in items] == [
        shown(store, "rec-000005-ID"),
        shown(store, "jane.doe@example.org"),
        shown(store, " rec-000006-ID"),
    ]
    assert [i["status"] for i in items] == ["forgotten", "not_found", "not_found"]
    assert "whitespace" in items[2]["hint"]
    # The hashes are the audit log's: a redacted cron log can be matched against it.
    assert audit_lines(store)[-1]["id_hashes"][0].startswith(items[0]["id"][2:])
    human = erase("forget", "--from-file", str(ids), "--store", str(store), env=clean_env(ERASE_REDACT_IDS="1"))
    assert human.returncode == 3 and shown(store, "jane.doe@example.org") in human.stderr
    assert "hint" in human.stderr
    assert_no_raw([r.stdout, r.stderr, human.stdout, human.stderr], ["rec-000005", "jane.doe", "rec-000006"])
    plain = erase("forget", "--from-file", str(ids), "--store", str(store), "--json")
    assert "jane.doe@example.org" in plain.stdout  # without the flag, ids are shown as they are


def test_ingest_redacts_ids_in_reports_and_errors(store, tmp_path):
    def line(rid):
        return json.dumps({"id": rid, "input": f"in {rid}", "target": "t", "vec": [0.5] * 8}) + "\n"

    erase("forget", "rec-000007-ID", "--store", str(store))
    data = tmp_path / "more.jsonl"
    data.write_text(line("new-alice") + line("new-alice") + line(" new-bob") + line("rec-000007-ID"))
    r = erase(
        "ingest",
        str(data),
        "--vector-field",
        "vec",
        "--append",
        "--skip-invalid",
        "--redact-ids",
        "--store",
        str(store),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["skipped_forgotten"] == [shown(store, "rec-000007-ID")]
    assert [s["ids"] for s in out["skipped_invalid"]] == [
        [shown(store, "new-alice")],
        [shown(store, " new-bob"), shown(store, "new-bob")],
    ]
    assert shown(store, " new-bob") in out["skipped_invalid"][1]["message"]
    human = erase(
        "ingest",
        str(data),
        "--vector-field",
        "vec",
        "--append",
        "--skip-invalid",
        "--store",
        str(store),
        env=clean_env(ERASE_REDACT_IDS="1"),
    )
    assert human.returncode == 1 and shown(store, "new-alice") in human.stderr  # now a duplicate
    assert_no_raw([r.stdout, r.stderr, human.stdout, human.stderr], ["new-alice", "new-bob", "rec-000007"])
    # Refused before any store exists: there is no key to hash with, and the id is still hidden.
    r = erase("ingest", str(data), "--vector-field", "vec", "--redact-ids", "--store", str(tmp_path / "new"), "--json")
    assert r.returncode == 1 and "[redacted]" in r.stderr
    assert_no_raw([r.stdout, r.stderr], ["new-alice"])


def test_fit_and_status_redact_the_example_ids(store):
    raw = [e["id"] for e in json.loads(erase("status", "--store", str(store), "--json").stdout)["fit"]["examples"]]
    assert raw
    outs = []
    for args in (["fit", "-k", "4", "--dim", "8", "--eps", "0.1"], ["status"]):
        for extra in (["--json"], []):
            r = erase(*args, *extra, "--store", str(store), env=clean_env(ERASE_REDACT_IDS="1"))
            assert r.returncode == 0, r.stderr
            outs += [r.stdout, r.stderr]
            if extra:
                report = json.loads(r.stdout)
                examples = (report["fit"] if "fit" in report else report)["examples"]
                assert sorted(e["id"] for e in examples) == sorted(shown(store, i) for i in raw)
    assert_no_raw(outs, raw)


def test_verify_redacts_the_ids_its_differences_quote(store, monkeypatch):
    """A difference names record ids (initial centres, examples); --redact-ids, or
    ERASE_REDACT_IDS, shows them as keyed hashes there too."""
    from dataclasses import replace

    from typer.testing import CliRunner

    from erase_cli.cli import app

    real_fit = service.qk.fit

    def another_seed(source, params, *args, **kwargs):  # a refit that disagrees with the stored fit
        return real_fit(source, replace(params, seed=params.seed + 1), *args, **kwargs)

    monkeypatch.setattr(service.qk, "fit", another_seed)
    raw = sorted(
        i for d in [service.verify(store)] for i in d.quoted_ids if any(repr(i) in line for line in d.differences)
    )
    assert raw, "the differences quote no id: nothing to redact"
    runner = CliRunner()
    plain = runner.invoke(app, ["verify", "--store", str(store), "--json"])
    assert plain.exit_code == 1 and all(i in plain.stdout for i in raw)
    outs = []
    for args, env in ((["--redact-ids", "--json"], {}), ([], {"ERASE_REDACT_IDS": "1"})):
        r = runner.invoke(app, ["verify", *args, "--store", str(store)], env=env)
        assert r.exit_code == 1, r.output
        outs += [r.stdout, r.stderr]
    report = json.loads(outs[0])
    assert report["identical"] is False and list(report) == list(json.loads(plain.stdout))
    assert shown(store, raw[0]) in " ".join(report["differences"])
    assert "DIFFERENT" in outs[2] and shown(store, raw[0]) in outs[2]
    assert_no_raw(outs, raw)


# --------------------------------------------------------------------------- ERASE_* variables


def test_the_option_parser_never_reads_the_environment():
    """config.py is the one reader of ERASE_* (each option's callback): click reading them too
    turned a bad value into a usage error naming the option instead of the variable."""
    import typer

    from erase_cli.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            assert getattr(param, "envvar", None) is None, (name, param.name)
    status = erase("status", "--help").stdout
    for variable in ("ERASE_STORE", "ERASE_LOCK_TIMEOUT", "ERASE_SECRET_FILE", "ERASE_REDACT_IDS"):
        assert f"[env var: {variable}]" in " ".join(status.replace("│", "").split()), variable
    assert "ERASE_EMBEDDER" in erase("ingest", "--help").stdout
    assert "ERASE_MODEL" in erase("ask", "--help").stdout


@pytest.mark.parametrize(
    "variable, value, command",
    [
        ("ERASE_LOCK_TIMEOUT", "abc", ["status"]),
        ("ERASE_LOCK_TIMEOUT", "-1", ["forget", "rec-000001-ID"]),
        ("ERASE_LOCK_TIMEOUT", "nan", ["verify"]),
        ("ERASE_REDACT_IDS", "maybe", ["forget", "rec-000001-ID"]),
        ("ERASE_REDACT_IDS", "2", ["status"]),
    ],
)
def test_a_bad_variable_is_a_one_line_error_naming_it(store, variable, value, command):
    # refused() also checks that the store is unchanged: the forget never ran.
    msg = refused(
        [*command, "--store", str(store)],
        store,
        kind="invalid_parameter",
        mentions=[f"{variable}={value!r}", "set it to", "or unset it"],
        env=clean_env(**{variable: value}),
    )
    assert "--help" not in msg
    r = erase(*command, "--store", str(store), env=clean_env(**{variable: value}))
    assert r.returncode == 1 and r.stdout == "" and r.stderr == f"error: {msg}\n"


@pytest.mark.parametrize("value", ["1", "true", "YES", " yes "])
def test_redact_ids_variable_yes(store, value):
    r = erase("forget", "rec-000008-ID", "--store", str(store), "--json", env=clean_env(ERASE_REDACT_IDS=value))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ids"] == [{"id": shown(store, "rec-000008-ID"), "status": "forgotten"}]


@pytest.mark.parametrize("value", ["0", "false", "No", ""])
def test_redact_ids_variable_no(store, value):
    r = erase("forget", "rec-000009-ID", "--store", str(store), "--json", env=clean_env(ERASE_REDACT_IDS=value))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ids"] == [{"id": "rec-000009-ID", "status": "forgotten"}]


def test_a_flag_beats_its_variable(store, tmp_path):
    """Flag > variable > default: a flag given means its variable is not even read."""
    env = clean_env(ERASE_REDACT_IDS="maybe", ERASE_LOCK_TIMEOUT="abc", ERASE_STORE=str(tmp_path / "nowhere"))
    r = erase("status", "--redact-ids", "--lock-timeout", "5", "--store", str(store), "--json", env=env)
    assert r.returncode == 0, r.stderr
    r = erase("status", "--json", env=clean_env(ERASE_STORE=str(store)))
    assert r.returncode == 0 and json.loads(r.stdout)["records"] == 30


# --------------------------------------------------------------------------- the README's tables


def test_the_readme_lists_every_error_kind_status_and_exit_code():
    from helpers import ROOT

    from erase_cli import errors

    readme = (ROOT / "README.md").read_text()
    kinds = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.EraseError) and c is not errors.EraseError
    ]
    for cls in kinds:
        assert f"| `{cls.kind}` | {cls.exit_code} |" in readme, cls.kind
    assert "| `usage` | 2 |" in readme and "| `interrupted` | 128 + signal |" in readme
    for status in ("forgotten", "would_forget", "already_forgotten", "not_found"):
        assert f"| `{status}` |" in readme, status
    for code in ("0", "1", "2", "3", "75", "128 + signal"):
        assert f"\n| {code} |" in readme, code
    # Kinds added after the rename were never spelled with hyphens: no row in the old-kind table.
    never_hyphenated = (errors.StoreChanged, errors.DeviceUnavailable, errors.SchedulerUnavailable)
    for cls in kinds:
        if "_" in cls.kind:
            assert f"| `{cls.kind.replace('_', '-')}` | `{cls.kind}` |" in readme or cls in never_hyphenated, cls.kind
