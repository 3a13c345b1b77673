"""The Python API (issue 11): `api.Answerer` answers many questions with one model, follows every
forget (the deletion contract, in process), reads the store's generation without the lock, and
its answers are `erase ask --json`'s objects."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from helpers import FIT, ROOT, clean_env, make_records, write_jsonl

from erase_cli import api, generation, service, store
from erase_cli.answer import Answerer, Question
from erase_cli.errors import InvalidInput, NotFitted, StaleFit, StoreDamaged
from erase_cli.llm import FakeGenerator

QUESTION = "text marker TXT05X"


class Recording(FakeGenerator):
    """The fake, remembering every instance and counting set_prefix calls."""

    made: list[Recording] = []

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.prefixes_set = 0
        Recording.made.append(self)

    def set_prefix(self, text, cache_file=None):
        self.prefixes_set += 1
        return super().set_prefix(text, cache_file)


@pytest.fixture
def answerer(text_store, model):
    Recording.made = []
    with Answerer(text_store, model=model, generator_factory=Recording) as a:
        yield a


def current(root: Path) -> generation.Snapshot:
    return generation.read(root.resolve())


def demonstration_of(root: Path, question: str, mode: str) -> dict:
    """A demonstration of the prompt `question` gets now (the one nearest it, last)."""
    chosen = service.show_prompt(root, question, mode=mode)
    manifest = current(root).manifest
    assert manifest is not None
    by_id = {e["id"]: e for e in manifest.examples} | {e["id"]: e for r in manifest.routes for e in r["examples"]}
    return by_id[chosen.examples[-1]["id"]]


def contract_violations(root: Path, answerer: Answerer, mode: str, forgets: int = 5) -> int:
    """Forget, `forgets` times, a demonstration of the prompt QUESTION gets, then answer QUESTION:
    an answer that starts after the forget returned must report the fit the forget left (its
    generation, the prompt digest `erase prompt` gives now), and the model's prefix must hold
    no forgotten demonstration. Returns how many of those checks failed."""
    violations = 0
    answerer.answer(QUESTION)  # the model holds the prompt a forget is about to change
    for _ in range(forgets):
        victim = demonstration_of(root, QUESTION, mode)
        report = service.forget(root, [victim["id"]])
        assert report["batch"]["prompt_changed"] or report["batch"]["routes_changed"]
        now = current(root)
        reply = answerer.answer(QUESTION)
        violations += reply.erase.generation != str(now.generation)
        violations += reply.erase.prompt_digest != service.show_prompt(root, QUESTION, mode=mode).prompt_digest
        violations += victim["input"] in (Recording.made[-1].prefix or "")
    return violations


# -- the deletion contract -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["global", "routed"])
def test_every_answer_after_a_forget_follows_it(text_store, model, mode):
    Recording.made = []
    with Answerer(text_store, mode=mode, model=model, generator_factory=Recording) as answerer:
        assert contract_violations(text_store, answerer, mode) == 0
    assert len(Recording.made) == 1  # one model for every answer


def test_the_contract_test_fails_without_the_generation_check(text_store, model, monkeypatch):
    """The same check with the Answerer's generation check disabled: it must catch that."""
    monkeypatch.setattr(Answerer, "_refresh", lambda self: False)
    Recording.made = []
    with Answerer(text_store, mode="global", model=model, generator_factory=Recording) as answerer:
        assert contract_violations(text_store, answerer, "global") > 0


def test_a_forget_changes_the_prompt_the_generation_and_the_prefix(text_store, answerer):
    first = answerer.answer(QUESTION)
    victim = demonstration_of(text_store, QUESTION, "auto")
    assert victim["input"] in Recording.made[0].prefix
    service.forget(text_store, [victim["id"]])
    second = answerer.answer(QUESTION)
    assert second.erase.generation > first.erase.generation  # generations sort by time
    assert second.erase.prompt_digest != first.erase.prompt_digest
    assert second.erase.generation == str(current(text_store).generation) == answerer.generation
    assert victim["input"] not in Recording.made[0].prefix
    assert not second.cache.hit  # the new prompt's prefix was built


def test_an_answer_whose_prompt_did_not_change_keeps_its_prefix(text_store, answerer):
    # A store this small crosses on every deletion at FIT; a coarse lattice and one iteration
    # leave many deletions that change no prompt (the Answerer follows the refit).
    service.fit(text_store, eps=0.4, max_iter=1)
    first = answerer.answer(QUESTION)
    used = {e["id"] for e in service.show_prompt(text_store, QUESTION).examples}
    manifest = current(text_store).manifest
    assert manifest is not None
    served = {e["id"] for e in manifest.examples} | {e["id"] for r in manifest.routes for e in r["examples"]}
    for i in range(40):
        rid = f"t{i:02d}"
        if rid in served:
            continue
        dry = service.forget(text_store, [rid], dry_run=True)["batch"]
        if not dry["prompt_changed"] and not dry["routes_changed"]:
            break
    else:
        pytest.skip("every deletion changes a prompt of this fit")
    assert rid not in used
    service.forget(text_store, [rid])
    second = answerer.answer(QUESTION)
    assert second.erase.generation != first.erase.generation  # a forget always makes a new generation
    assert second.erase.prompt_digest == first.erase.prompt_digest
    assert second.cache.hit and Recording.made[0].prefixes_set == 1  # no rebuild


def test_refresh_drops_a_prefix_the_fit_no_longer_serves(text_store, answerer):
    answerer.answer(QUESTION)
    held = Recording.made[0]
    assert held.prefix
    service.forget(text_store, [demonstration_of(text_store, QUESTION, "auto")["id"]])
    assert answerer.refresh() and held.prefix is None
    assert answerer.refresh() is False  # nothing moved since


def test_a_forget_during_an_answer_is_dropped_when_it_ends(text_store, model):
    """The answer already running finishes with its prompt; its prefix leaves memory as it ends
    and is never saved."""
    victim = demonstration_of(text_store, QUESTION, "auto")

    class ForgetWhileAnswering(FakeGenerator):
        def generate(self, query, max_tokens, stop):
            service.forget(text_store, [victim["id"]])
            return super().generate(query, max_tokens, stop)

    made = []
    factory = lambda *a, **kw: made.append(ForgetWhileAnswering(*a, **kw)) or made[-1]  # noqa: E731
    before = current(text_store)
    with Answerer(text_store, model=model, generator_factory=factory) as answerer:
        reply = answerer.answer(QUESTION)
        assert reply.erase.generation == str(before.generation)  # started before the forget
        assert made[0].prefix is None
    assert not list((text_store / "cache").glob(f"{reply.erase.prompt_digest}-*"))


def test_the_generation_is_read_without_the_lock(text_store, model):
    """A writer holds the store's lock while answers are made: they neither wait for it nor
    fail, and the first one after the change reports the new generation (its prefix cache is
    saved another time: the lock is busy)."""
    said = []
    with Answerer(
        text_store, model=model, lock_timeout=30, on_message=said.append, generator_factory=FakeGenerator
    ) as a:
        a.answer(QUESTION)
        service.forget(text_store, [demonstration_of(text_store, QUESTION, "auto")["id"]])
        holding, release = threading.Event(), threading.Event()

        def writer():
            with store.open_store(text_store, write=True):
                holding.set()
                release.wait(60)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert holding.wait(30)
            t0 = time.monotonic()
            reply = a.answer(QUESTION)
            again = a.answer(QUESTION)
            elapsed = time.monotonic() - t0
        finally:
            release.set()
            thread.join()
    assert elapsed < 5  # far below the 30 s lock timeout a locked read would wait
    assert reply.erase.generation == again.erase.generation == str(current(text_store).generation)
    assert any("busy" in m for m in said)
    assert not list((text_store / "cache").glob(f"{reply.erase.prompt_digest}-*"))


def test_the_fit_is_read_again_only_when_the_stamp_moves(text_store, answerer, monkeypatch):
    reads = []
    real = generation.read
    monkeypatch.setattr(generation, "read", lambda *a, **kw: reads.append(1) or real(*a, **kw))
    for _ in range(5):
        answerer.answer(QUESTION)
    assert reads == []
    service.forget(text_store, ["t00"])
    answerer.answer(QUESTION)
    answerer.answer(QUESTION)
    assert len(reads) == 1


# -- reading the generation ------------------------------------------------------------------


def test_a_torn_pair_is_never_served(text_store):
    """store.json of one commit with manifest.json of another (what a reader between a commit's
    two renames would see, here made to last): read() retries, then reads under the lock, which
    reports the damage instead of serving the pair."""
    old = (text_store / "manifest.json").read_bytes()
    service.forget(text_store, ["t00"])
    tmp = text_store / "manifest.json.tmp"
    tmp.write_bytes(old)
    tmp.replace(text_store / "manifest.json")
    with pytest.raises(StoreDamaged, match="checksum"):
        generation.read(text_store.resolve())


def test_a_fit_that_cannot_be_read_leaves_no_prefix_in_memory(text_store, answerer):
    answerer.answer(QUESTION)
    old = (text_store / "manifest.json").read_bytes()
    service.forget(text_store, ["t00"])
    (text_store / "manifest.json.tmp").write_bytes(old)
    (text_store / "manifest.json.tmp").replace(text_store / "manifest.json")
    with pytest.raises(StoreDamaged):
        answerer.answer(QUESTION)
    assert Recording.made[0].prefix is None


def test_a_writer_that_died_between_the_renames_is_read_through_its_journal(text_store, monkeypatch):
    """A forget dies after renaming store.json and before manifest.json: the committed fit is
    the journal's, and read() finds it (under the lock, which is free); completing the journal
    keeps the generation, since a rename keeps the inode and mtime."""
    root = text_store.resolve()
    before = generation.read(root)

    class Died(Exception):
        pass

    def die_between(name):
        staged = root / "journal" / "files"
        if (staged / "manifest.json").exists() and not (staged / "store.json").exists():
            raise Died

    monkeypatch.setattr(store, "_test_point", die_between)
    with pytest.raises(Died):
        service.forget(root, [demonstration_of(root, QUESTION, "global")["id"]])
    monkeypatch.undo()
    assert (root / "journal" / "journal.json").exists()
    during = generation.read(root)
    assert during.generation != before.generation
    assert during.manifest == store.Manifest.parse((root / "journal/files/manifest.json").read_bytes(), root)
    service.recover(root)
    after = generation.read(root)
    assert after.generation == during.generation and after.stamp != during.stamp


def test_generation_strings_sort_by_time():
    g = generation.Generation(1_700_000_000_123_456_789, "ab" * 32, 4242)
    assert str(g) == f"{1_700_000_000_123_456_789:016x}-{'ab' * 6}-{4242:x}"
    later = generation.Generation(1_700_000_000_123_456_790, "00" * 32, 1)
    assert str(later) > str(g) and later > g


# -- staleness, validation, shape ------------------------------------------------------------


def test_a_stale_fit_is_answered_only_when_allowed(text_store, model, tmp_path):
    refusing = Answerer(text_store, model=model, generator_factory=FakeGenerator)
    allowing = Answerer(text_store, model=model, allow_stale=True, generator_factory=FakeGenerator)
    assert allowing.answer(QUESTION).erase.stale is False
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "new", "input": "a new one", "target": "L0"}) + "\n")
    service.ingest(text_store, str(more), embedder="fake:16", append=True)
    with pytest.raises(StaleFit, match="erase fit"):
        refusing.answer(QUESTION)
    with pytest.raises(StaleFit):
        Answerer(text_store, model=model, generator_factory=FakeGenerator)
    stale = allowing.answer(QUESTION)
    assert stale.erase.stale is True and allowing.stale
    service.fit(text_store)
    fresh = allowing.answer(QUESTION)
    assert fresh.erase.stale is False and fresh.erase.generation != stale.erase.generation
    assert refusing.answer(QUESTION).erase.stale is False


def test_an_answer_is_the_ask_json_object(text_store, answerer):
    reply = answerer.answer(QUESTION, choices=["L0", "L10"])
    out = reply.to_json()
    assert list(out) == ["question", "answer", "choices", "cache", "erase"]
    assert list(out["erase"]) == ["mode", "route", "prompt_digest", "generation", "stale"]
    assert out["answer"] == "L0" and reply["answer"] == "L0" and reply.choices == out["choices"]
    assert orjson.loads(orjson.dumps(out)) == out
    [via_ask] = service.ask(
        text_store, [Question(QUESTION, ["L0", "L10"])], model=answerer.model_path, generator_factory=FakeGenerator
    )
    assert via_ask.to_json() == {**out, "cache": via_ask.to_json()["cache"]}
    assert "choices" not in answerer.answer(QUESTION).to_json()


def test_answer_checks_its_arguments(text_store, answerer, tmp_path, model):
    with pytest.raises(InvalidInput, match="distinct"):
        answerer.answer(QUESTION, choices=["a", "a"])
    with pytest.raises(InvalidInput, match="vector"):
        answerer.answer(QUESTION, vector=[0.0, 0.0])
    with pytest.raises(InvalidInput, match="string"):
        answerer.answer(["not", "a", "string"])  # type: ignore[arg-type]
    vec_root = tmp_path / "vec"
    service.ingest(vec_root, str(write_jsonl(tmp_path / "vec.jsonl", make_records(30, dim=16))), vector_field="vec")
    service.fit(vec_root, **FIT)
    with Answerer(vec_root, mode="routed", model=model, generator_factory=FakeGenerator) as a:
        routed = a.answer("q", vector=[1.0] + [0.0] * 15)
        assert routed.erase.mode == "routed" and routed.erase.route is not None
        with pytest.raises(InvalidInput, match="--query-vector"):
            a.answer("q")


def test_answer_many_is_lazy_and_a_closed_answerer_answers_no_more(text_store, answerer):
    answers = answerer.answer_many(Question(q) for q in ("one", "two"))
    assert Recording.made == []  # nothing answered, no model loaded
    assert [a.question for a in answers] == ["one", "two"] and len(Recording.made) == 1
    answerer.close()
    with pytest.raises(ValueError, match="closed"):
        answerer.answer("three")


def test_an_unfitted_store_is_refused_before_any_model(tmp_path, model):
    root = tmp_path / "unfitted"
    service.ingest(root, str(write_jsonl(tmp_path / "r.jsonl", make_records(5, dim=16))), vector_field="vec")
    with pytest.raises(NotFitted, match="erase fit"):
        Answerer(root, model=model, generator_factory=pytest.fail)


def test_the_api_module_exports_what_it_documents():
    for name in api.__all__:
        assert getattr(api, name) is not None
    assert api.Answerer is Answerer and api.forget is service.forget


# -- the README's example --------------------------------------------------------------------


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use from Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.integration
def test_the_readme_python_example_runs(tmp_path):
    """The exact code of README "Use from Python", on the bundled models, from the repository
    root as the README says (its temporary directory goes under tmp_path)."""
    code = readme_python_example()
    assert "api.forget" in code and "api.Answerer" in code
    env = clean_env(TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    before, forget, after, erase = r.stdout.splitlines()
    assert before.split()[-1] < after.split()[-1]  # the generations, in order
    assert "'generation': '" + after.split()[-1] in erase
