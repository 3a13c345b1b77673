import json
import math

import numpy as np
import orjson
import pytest

from erase_cli.embed import FakeEmbedder
from erase_cli.errors import InvalidInput, InvalidParameter, NotFound
from erase_cli.evaluate import (
    Item,
    chance_level,
    is_test,
    load_task,
    most_frequent_share,
    paired_difference,
    render_table,
    run_eval,
    wilson_interval,
)
from erase_cli.llm import FakeGenerator


def _mc_task(tmp_path, n=40, name="toy_mc"):
    examples = [
        {"input": f"Is {i} even?", "target_scores": {"yes": int(i % 2 == 0), "no": int(i % 2)}} for i in range(n)
    ]
    task = {
        "name": name,
        "task_prefix": "Parity.\n",
        "example_input_prefix": "\nQ: ",
        "example_output_prefix": "\nA: ",
        "append_choices_to_input": False,
        "examples": examples,
    }
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    return path


def _gen_task(tmp_path, n=30):
    examples = [{"input": f"count to {i}", "target": [str(i), f"n{i}"]} for i in range(n)]
    examples.append({"input": "say hi", "target": "hi"})
    path = tmp_path / "gen" / "task.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"examples": examples}))  # no name: the directory names it
    return path


def test_split_is_hash_fixed_and_about_half():
    ids = [str(i) for i in range(2000)]
    test = [i for i in ids if is_test("navigate", i)]
    assert 900 <= len(test) <= 1100
    # Another task name gives another split.
    assert test != [i for i in ids if is_test("snarks", i)]


def test_split_ignores_seed_and_limit_takes_first_test_ids(tmp_path):
    path = _mc_task(tmp_path)
    a = run_eval(path, ["zero"], seed=0, generator=FakeGenerator())
    b = run_eval(path, ["zero"], seed=123, generator=FakeGenerator())
    assert a["test_ids"] == b["test_ids"]
    assert a["n_train"] + a["n_test"] == 40
    expected = [str(i) for i in range(40) if is_test("toy_mc", str(i))]
    assert a["test_ids"] == expected
    limited = load_task(path, limit=3)
    assert [it.id for it in limited.test] == expected[:3]
    assert len(limited.train) == a["n_train"]  # the limit never shrinks the train set
    with pytest.raises(InvalidParameter):
        load_task(path, limit=0)


def test_bigbench_multiple_choice_loading(tmp_path):
    task = load_task(_mc_task(tmp_path))
    assert task.name == "toy_mc" and task.kind == "multiple_choice"
    item = next(it for it in task.train + task.test if it.id == "3")
    assert item == Item("3", "Is 3 even?", ("no",), ("yes", "no"))
    assert task.fmt.prefix == "Parity.\n" and task.fmt.append_choices is False


def test_bigbench_multiple_correct_choices_use_max_score(tmp_path):
    examples = [{"input": f"x{i}", "target_scores": {"a": 1, "b": 0.5, "c": 1}} for i in range(8)]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"name": "m", "examples": examples}))
    task = load_task(path)
    for item in task.train + task.test:
        assert item.targets == ("a", "c") and item.choices == ("a", "b", "c")
    assert chance_level(task.test) == pytest.approx(2 / 3)


def test_bigbench_generative_loading(tmp_path):
    task = load_task(_gen_task(tmp_path))
    assert task.name == "gen" and task.kind == "generative"
    items = {it.id: it for it in task.train + task.test}
    assert items["7"].targets == ("7", "n7") and items["7"].choices is None
    assert items["30"].targets == ("hi",)


def test_bad_task_files(tmp_path):
    with pytest.raises(NotFound):
        load_task(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"examples": [{"input": "x"}]}))
    with pytest.raises(InvalidInput, match="example 0"):
        load_task(bad)
    with pytest.raises(InvalidInput):
        load_task(tmp_path)  # a directory without task.json or train/test JSONL


def test_jsonl_single_file_and_pair(tmp_path):
    rows = [
        {"id": f"r{i}", "input": f"text {i}", "target": "a" if i % 3 else "b", "choices": ["a", "b"]} for i in range(30)
    ]
    path = tmp_path / "intents.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = load_task(path)
    assert task.name == "intents"
    assert sorted(it.id for it in task.test) == sorted(r["id"] for r in rows if is_test("intents", r["id"]))
    assert [it.id for it in task.test] == sorted(it.id for it in task.test)
    pair = tmp_path / "pair"
    pair.mkdir()
    (pair / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:20]))
    (pair / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[20:]))
    task = load_task(pair)
    assert len(task.train) == 20 and len(task.test) == 10
    assert load_task((pair / "train.jsonl", pair / "test.jsonl")).test == task.test


def test_wilson_interval_hand_computed():
    # 8/10: centre (0.8 + 1.96^2/20) / (1 + 1.96^2/10), half-width 1.96/1.38415 * sqrt(0.025604)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_paired_difference_hand_computed():
    a = [1, 1, 0, 1, 0]
    b = [0, 1, 0, 0, 1]
    got = paired_difference(a, b)
    # d = [1, 0, 0, 1, -1]; sd (n-1) = sqrt(2.8 / 4); half = 1.96 * sd / sqrt(5)
    half = 1.959963984540054 * math.sqrt(0.7) / math.sqrt(5)
    assert got["mean"] == pytest.approx(0.2)
    assert got["low"] == pytest.approx(0.2 - half) and got["high"] == pytest.approx(0.2 + half)
    same = paired_difference([1, 0, 1], [1, 0, 1])
    assert same["mean"] == 0 and same["low"] == same["high"] == 0
    assert paired_difference([1], [0])["low"] is None


def test_most_frequent_share_and_chance():
    assert most_frequent_share(["a", "b", "a", "a"]) == ("a", 0.75)
    assert most_frequent_share([]) == (None, None)
    items = [Item("1", "q", ("x",), ("x", "y")), Item("2", "q", ("x",), ("x", "y", "z", "w"))]
    assert chance_level(items) == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert chance_level([Item("1", "q", ("x",))]) is None


class _ParityGenerator(FakeGenerator):
    """Answers from the query's number: the right parity, except it says 'yes' when the prefix
    has no demonstrations, so zero-shot and few-shot differ in a known way."""

    def score(self, query, choices):
        super().score(query, choices)
        n = int(query.split("Is ")[1].split(" ")[0])
        demos = "A:" in (self.prefix or "")
        right = ("yes" if n % 2 == 0 else "no") if demos else "yes"
        return [(c, 0.0 if c == right else -1.0, 0.0 if c == right else -1.0) for c in choices]


def test_run_eval_end_to_end_with_fakes(tmp_path):
    path = _mc_task(tmp_path)
    gen = _ParityGenerator()
    out = run_eval(path, None, limit=10, seed=1, k=3, generator=gen, embedder=FakeEmbedder(16))
    assert list(out["methods"]) == ["erase", "routed", "kmeans", "random", "zero", "knn"]
    n = out["n_test"]
    assert n == 10
    # 4 shared prefixes once each, one per route used, then knn builds one prefix per query.
    routes_used = len(set(out["methods"]["routed"]["per_item"]["route"]))
    assert 1 <= routes_used <= 3
    assert gen.prefix_evaluations == 4 + routes_used + n
    assert [out["methods"][m]["prefix_builds"] for m in ("erase", "routed", "knn")] == [1, routes_used, n]
    assert out["methods"]["knn"]["prefix_ms"] is None and out["methods"]["routed"]["prefix_ms"] >= 0
    for method in ("erase", "routed", "kmeans", "random", "knn"):
        m = out["methods"][method]
        assert m["accuracy"] == 1.0 and m["correct"] == n
        assert len(m["per_item"]["latency_ms"]) == n
    zero = out["methods"]["zero"]
    evens = sum(int(i) % 2 == 0 for i in out["test_ids"])
    assert zero["correct"] == evens
    assert zero["most_frequent_answer"] == "yes" and zero["most_frequent_share"] == 1.0
    assert out["paired"]["erase-zero"]["mean"] == pytest.approx((n - evens) / n)
    assert out["paired"]["erase-kmeans"]["mean"] == 0
    assert out["paired"]["routed-erase"]["mean"] == 0 and "routed-knn" in out["paired"]
    assert "erase-routed" not in out["paired"]
    assert len(out["methods"]["erase"]["examples"]) <= 3
    assert len(out["methods"]["random"]["examples"]) == 3
    assert out["methods"]["zero"]["examples"] == []
    assert out["chance"] == 0.5
    assert out["embedder"] == "fake:16"
    orjson.dumps(out)  # JSON-ready, no numpy scalars


def test_run_eval_generative_exact_match(tmp_path):
    path = _gen_task(tmp_path)
    # The fake generates the query's second-to-last word, i.e. the number in "count to N".
    out = run_eval(path, ["zero", "random"], generator=FakeGenerator(), k=2)
    assert out["kind"] == "generative" and out["chance"] is None
    for method in ("zero", "random"):
        m = out["methods"][method]
        expected = sum(i != "30" for i in out["test_ids"])  # "say hi" -> "say" is wrong
        assert m["correct"] == expected
        assert "accuracy_mean_logprob" not in m


def test_run_eval_rejects_bad_options(tmp_path):
    path = _mc_task(tmp_path)
    with pytest.raises(InvalidParameter, match="unknown method"):
        run_eval(path, ["bogus"], generator=FakeGenerator())
    with pytest.raises(InvalidParameter):
        run_eval(path, ["zero"], k=0, generator=FakeGenerator())


def test_routed_prompts_follow_the_routing_rule():
    """eval's routed method routes a test vector exactly as ask does (routing.route_vectors on
    the fit's final centroids), and its prompt is the route's members, nearest last."""
    from erase_cli import qkmeans as qk
    from erase_cli.evaluate import erase_state, routed_prompts

    rng = np.random.default_rng(4)
    train = rng.normal(size=(60, 40)).astype(np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    test = rng.normal(size=(15, 40)).astype(np.float32)
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    ids = [f"i{n}" for n in range(60)]
    got = routed_prompts(train, ids, test, 4, 0, 3)
    state, projector = erase_state(train, ids, 4, 0, 3)
    routes = dict(state.routes)
    for (j, demos), v in zip(got, projector(qk.to_fixed(test))):
        assert j == qk.route(state.centroids[-1], list(routes), v)
        assert demos == list(reversed(routes[j])) and len(demos) == min(3, int(state.final_counts[j]))


def test_render_table_has_a_row_per_method(tmp_path):
    from rich.console import Console

    out = run_eval(
        _mc_task(tmp_path), ["erase", "random", "zero"], limit=5, generator=_ParityGenerator(), embedder=FakeEmbedder(8)
    )
    console = Console(width=200, record=True)
    console.print(render_table(out))
    text = console.export_text()
    for method in ("erase", "random", "zero"):
        assert method in text
    assert "chance 0.50" in text
