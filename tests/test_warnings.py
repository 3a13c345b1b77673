"""Warnings where users were surprised: a stderr line for people, a `warnings` list (or, per
answer of `ask`, a `warning`) in --json; the command still succeeds."""

from __future__ import annotations

import json

import pytest
from helpers import build_store, erase, make_records

from erase_cli import service
from erase_cli.answer import Question
from erase_cli.llm import FakeGenerator


@pytest.fixture
def small(tmp_path):
    store = tmp_path / "store"
    records = make_records(6, dim=8)
    build_store(store, records, tmp_path, k=2)
    return store, records


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: ")]


def test_fit_with_k_above_the_record_count_warns(small):
    store, _ = small
    r = erase("fit", "-k", "9", "--dim", "8", "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["warnings"]) == 1 and "-k 9 is more than the 6 records" in out["warnings"][0]
    assert warning_lines(r.stderr) == [f"warning: {out['warnings'][0]}"]
    assert out["k_eff"] == 6
    r = erase("fit", "-k", "6", "--dim", "8", "--store", str(store))
    assert r.returncode == 0 and warning_lines(r.stderr) == []


def test_fit_on_an_empty_store_warns(small):
    store, records = small
    assert erase("forget", *(r.id for r in records), "--store", str(store)).returncode == 0
    r = erase("fit", "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_records"] == 0 and len(out["warnings"]) == 1
    assert "no records" in out["warnings"][0] and "zero-shot" in out["warnings"][0]
    assert warning_lines(r.stderr) == [f"warning: {out['warnings'][0]}"]
    r = erase("fit", "--store", str(store))
    assert r.returncode == 0 and len(warning_lines(r.stderr)) == 1


@pytest.mark.parametrize("as_json", [False, True])
def test_ask_from_an_empty_file_says_so(small, tmp_path, as_json):
    store, _ = small
    model = tmp_path / "never-loaded.gguf"
    model.write_bytes(b"GGUF")  # no question, so the model is never loaded
    empty = tmp_path / "questions.txt"
    empty.write_text("\n  \n")
    flags = ["--json"] if as_json else []
    r = erase("ask", "--from-file", str(empty), "--model", str(model), "--store", str(store), *flags)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert warning_lines(r.stderr) == [f"warning: {empty} holds no questions; nothing was answered"]
    r = erase("ask", "--from-file", "-", "--model", str(model), "--store", str(store), *flags, input="")
    assert r.returncode == 0 and r.stdout == ""
    assert warning_lines(r.stderr) == ["warning: stdin holds no questions; nothing was answered"]


def test_ask_without_demonstrations_marks_every_answer(small, tmp_path):
    store, records = small
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF")
    questions = [Question("where is my parcel"), Question("cancel it")]
    answers = list(service.ask(store, questions, model=str(model), generator_factory=FakeGenerator))
    assert len(answers) == 2 and not any("warning" in a for a in answers)

    service.forget(store, [r.id for r in records])
    service.fit(store, k=2, eps=0.1, dim=8, seed=0, max_iter=3)
    answers = list(service.ask(store, questions, model=str(model), generator_factory=FakeGenerator))
    assert len(answers) == 2
    assert all("no demonstrations" in a["warning"] and "zero-shot" in a["warning"] for a in answers)


@pytest.mark.integration
def test_ask_without_demonstrations_warns_once_on_the_command_line(small):
    store, records = small
    assert erase("forget", *(r.id for r in records), "--store", str(store)).returncode == 0
    assert erase("fit", "--store", str(store)).returncode == 0
    r = erase(
        "ask",
        "--from-file",
        "-",
        "--max-tokens",
        "2",
        "--threads",
        "1",
        "--store",
        str(store),
        "--json",
        input="hello\nwhere is my parcel\n",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(answers) == 2 and all("no demonstrations" in a["warning"] for a in answers)
    assert len(warning_lines(r.stderr)) == 1 and "zero-shot" in r.stderr
