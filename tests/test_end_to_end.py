"""The main job on the real parts: the bundled MiniLM embedder, the bundled SmolLM2 GGUF through
llama.cpp, real zarr files. Sample data -> ingest -> fit -> ask (cache saved) -> forget -> verify,
and the cache rules: a forget that changes the prompt deletes every cache file holding the old
demonstrations; one that does not change it keeps the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ROOT, erase, find_bytes

pytestmark = pytest.mark.integration

SAMPLE = ROOT / "sample_data" / "support_intents.jsonl"
QUESTIONS = ROOT / "sample_data" / "questions.jsonl"
N_SAMPLE = 160  # a slice keeps embedding time small; the whole file is the README demo's job


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    data = tmp / "sample.jsonl"
    data.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:N_SAMPLE]))
    path = tmp / "store"
    r = erase("ingest", str(data), "--store", str(path), "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ingested"] == N_SAMPLE
    r = erase("fit", "--store", str(path), "--json")
    assert r.returncode == 0, r.stderr
    return path


def ask(store: Path, *args: str) -> list[dict]:
    r = erase("ask", *args, "--store", str(store), "--json", "--threads", "1", timeout=300)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def records(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())


def test_ingest_used_the_real_embedder(store):
    status = json.loads(erase("status", "--store", str(store), "--json").stdout)
    assert status["embedder"] == "all-MiniLM-L6-v2" and status["dimension"] == 384
    assert status["fit"]["k_eff"] >= 1 and status["fit"]["dim"] == 32


def test_ask_with_choices_and_generation_then_cache_hit(store):
    first = ask(store, "--from-file", str(QUESTIONS))
    assert len(first) == 10
    assert not first[0]["cache"]["hit"] and all(a["cache"]["hit"] for a in first[1:])
    for a in first:
        scores = [c["score"] for c in a["choices"]]
        assert scores == sorted(scores, reverse=True) and a["answer"] == a["choices"][0]["text"]
    # a new process loads the saved prefix: only the question's own tokens are evaluated
    again = ask(store, "Please cancel the order I placed this morning.")
    assert again[0]["cache"]["hit"] and again[0]["answer"].strip()
    prefix_tokens = first[0]["cache"]["tokens_evaluated"]
    assert again[0]["cache"]["tokens_evaluated"] < prefix_tokens / 3
    assert list((store / "cache").glob("*.kv"))


def test_forget_that_changes_the_prompt_purges_the_cache(store):
    manifest = records(store)
    example = manifest["examples"][0]
    ask(store, "Where is my parcel?")
    assert list((store / "cache").glob("*.kv"))
    needles = {"input": example["input"].encode()}
    assert find_bytes(store, needles)  # the demonstration is in the manifest and the cache
    r = erase("forget", example["id"], "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["batch"]["prompt_changed"]
    assert find_bytes(store, needles) == {}
    assert not (store / "cache").exists() or not list((store / "cache").iterdir())
    assert erase("verify", "--store", str(store)).returncode == 0


def test_forget_that_keeps_the_prompt_keeps_the_cache(store):
    ask(store, "Where is my parcel?")
    before = sorted(p.name for p in (store / "cache").glob("*.kv"))
    examples = {e["id"] for e in records(store)["examples"]}
    # find a record whose deletion does not change the prompt, with a dry run
    ids = [json.loads(line)["id"] for line in SAMPLE.read_text().splitlines()[:N_SAMPLE]]
    for rid in ids:
        if rid in examples:
            continue
        dry = json.loads(erase("forget", rid, "--dry-run", "--missing-ok", "--store", str(store), "--json").stdout)
        if dry["ids"][0]["status"] == "forgotten" and not dry["batch"]["prompt_changed"]:
            break
    else:
        pytest.skip("every record's deletion would change the prompt at these defaults")
    r = erase("forget", rid, "--store", str(store), "--json")
    assert not json.loads(r.stdout)["batch"]["prompt_changed"]
    assert sorted(p.name for p in (store / "cache").glob("*.kv")) == before
    assert ask(store, "Where is my parcel?")[0]["cache"]["hit"]


def test_audit_trail_is_valid(store):
    r = erase("log", "--verify", "--store", str(store), "--json")
    assert r.returncode == 0
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[-1]["verify"]["valid"] and {e["action"] for e in lines[:-1]} >= {"ingest", "fit", "forget"}
