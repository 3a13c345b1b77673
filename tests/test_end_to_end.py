"""The main job on the real parts: the bundled MiniLM embedder, the bundled SmolLM2 GGUF through
llama.cpp, real zarr files. Sample data -> ingest -> fit -> ask (cache saved) -> forget -> verify,
and the cache rules: a forget that changes a prompt (global or route) deletes every cache file
holding the old demonstrations; one that changes none keeps them all."""

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


def cached_digests(store: Path) -> set[str]:
    return {p.name.split("-")[0] for p in (store / "cache").glob("*.kv")}


def test_routed_ask_with_choices_then_cache_hits(store, tmp_path):
    # Five of the sample questions (they reach several routes) keep the two model runs short.
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(QUESTIONS.read_text().splitlines(keepends=True)[:5]))
    first = ask(store, "--from-file", str(questions))
    assert len(first) == 5 and len({a["erase"]["route"] for a in first}) > 1
    seen: set[str] = set()
    for a in first:
        # auto routes on a store that embeds its questions; a route's prefix is built once
        assert a["erase"]["mode"] == "routed" and a["erase"]["route"] is not None
        assert a["cache"]["hit"] == (a["erase"]["prompt_digest"] in seen)
        seen.add(a["erase"]["prompt_digest"])
        scores = [c["score"] for c in a["choices"]]
        assert scores == sorted(scores, reverse=True) and a["answer"] == a["choices"][0]["text"]
    assert cached_digests(store) == seen
    # a new process loads each route's saved prefix: only the questions' own tokens are evaluated
    again = ask(store, "--from-file", str(questions))
    assert all(a["cache"]["hit"] for a in again)
    assert [a["erase"] for a in again] == [a["erase"] for a in first]
    for a, b in zip(first, again):
        if not a["cache"]["hit"]:
            assert b["cache"]["tokens_evaluated"] < a["cache"]["tokens_evaluated"] / 3
    generated = ask(store, "Please cancel the order I placed this morning.", "--mode", "global")
    assert generated[0]["answer"].strip() and generated[0]["erase"]["route"] is None


def test_forget_that_changes_the_prompt_purges_the_cache(store):
    manifest = records(store)
    example = manifest["examples"][0]
    ask(store, "Where is my parcel?", "--mode", "global")
    ask(store, "--from-file", str(QUESTIONS))
    assert manifest["prompt_digest"] in cached_digests(store)
    needles = {"input": example["input"].encode()}
    assert find_bytes(store, needles)  # the demonstration is in the manifest and the caches
    r = erase("forget", example["id"], "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    batch = json.loads(r.stdout)["batch"]
    assert batch["prompt_changed"] and batch["routes_changed"]
    assert find_bytes(store, needles) == {}
    after = records(store)
    # what is left is only the caches of prompts the new fit still serves
    assert cached_digests(store) <= {after["prompt_digest"]} | {r["prompt_digest"] for r in after["routes"]}
    assert erase("verify", "--store", str(store)).returncode == 0


def test_forget_that_keeps_the_prompt_keeps_the_cache(store):
    # A store this small crosses on most deletions at the defaults; a coarse lattice and one
    # iteration leave many deletions that touch no prompt.
    assert erase("fit", "--eps", "0.4", "--max-iter", "1", "--store", str(store)).returncode == 0
    ask(store, "Where is my parcel?", "--mode", "global")
    before = sorted(p.name for p in (store / "cache").glob("*.kv"))
    examples = {e["id"] for e in records(store)["examples"]}
    # find a record whose deletion does not change the prompt, with a dry run
    ids = [json.loads(line)["id"] for line in SAMPLE.read_text().splitlines()[:N_SAMPLE]]
    for rid in ids:
        if rid in examples:
            continue
        dry = json.loads(erase("forget", rid, "--dry-run", "--missing-ok", "--store", str(store), "--json").stdout)
        quiet = not dry["batch"]["prompt_changed"] and not dry["batch"]["routes_changed"]
        if dry["ids"][0]["status"] == "would_forget" and quiet:
            break
    else:
        pytest.skip("every record's deletion would change a prompt at these defaults")
    r = erase("forget", rid, "--store", str(store), "--json")
    batch = json.loads(r.stdout)["batch"]
    assert not batch["prompt_changed"] and not batch["routes_changed"]
    assert sorted(p.name for p in (store / "cache").glob("*.kv")) == before
    assert ask(store, "Where is my parcel?", "--mode", "global")[0]["cache"]["hit"]


def test_audit_trail_is_valid(store):
    r = erase("log", "--verify", "--store", str(store), "--json")
    assert r.returncode == 0
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[-1]["verify"]["valid"] and {e["action"] for e in lines[:-1]} >= {"ingest", "fit", "forget"}
