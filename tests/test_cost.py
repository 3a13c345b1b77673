import pytest

from erase_cli.cost import CostInputs, break_even, cost_inputs_from_audit, holistic_cost
from erase_cli.errors import InvalidParameter


def _inputs(**kw):
    base = dict(
        n_records=1000,
        queries_per_deletion=1000,
        sisa_shards=5,
        sisa_epochs=3,
        train_multiplier=3,
        per_token_inference_s=0.001,
        tokens_per_example=50,
        erase_forget_s=0.02,
        prompt_change_rate=0.5,
        prefix_rebuild_s=2.0,
        erase_query_s=0.11,
        zero_shot_query_s=0.1,
    )
    base.update(kw)
    return CostInputs(**base)


def test_holistic_cost_hand_computed():
    out = holistic_cost(_inputs())
    erase, sisa = out["methods"]["erase"], out["methods"]["sisa"]
    # U_erase = 0.02 + 0.5 * 2.0; H = U + 1000 * (0.11 - 0.1)
    assert erase["U_s"] == pytest.approx(1.02)
    assert erase["H_s"] == pytest.approx(11.02)
    # per example 0.001 * 50 * 3 = 0.15 s; U = 1000/5 * 3 * 0.15 = 90; I = 5 * 0.1
    assert sisa["per_example_train_s"] == pytest.approx(0.15)
    assert sisa["U_s"] == pytest.approx(90.0)
    assert sisa["I_s"] == pytest.approx(0.5)
    assert sisa["H_s"] == pytest.approx(90.0 + 1000 * 0.4)
    assert sisa["label"] == "modelled" and erase["label"] == "measured"
    # erase is cheaper at every R >= 0: the lines never cross there.
    assert out["break_even_queries_per_deletion"] is None
    assert out["inputs"]["sisa_shards"] == 5 and out["inputs"]["n_records"] == 1000


def test_break_even_where_lines_cross():
    # One shard: SISA's query costs I0, U_sisa = 1000 * 3 * 0.15 = 450.
    out = holistic_cost(_inputs(sisa_shards=1))
    r = out["break_even_queries_per_deletion"]
    assert r == pytest.approx((450.0 - 1.02) / 0.01)
    at = holistic_cost(_inputs(sisa_shards=1, queries_per_deletion=r))["methods"]
    assert at["erase"]["H_s"] == pytest.approx(at["sisa"]["H_s"])


def test_break_even_edge_cases():
    assert break_even(1.0, 0.5, 1.0, 0.5) == 0.0
    assert break_even(1.0, 0.5, 2.0, 0.5) is None
    assert break_even(0.0, 1.0, 10.0, 0.0) == pytest.approx(10.0)


def test_finetuned_query_override():
    out = holistic_cost(_inputs(finetuned_query_s=0.05))
    assert out["methods"]["sisa"]["I_s"] == pytest.approx(0.25)


def test_cost_inputs_from_audit_averages_forget_entries():
    entries = [
        {"action": "ingest", "elapsed_ms": 9999},
        {"action": "forget", "elapsed_ms": 10.0, "prompt_changed": False, "action_taken": "none"},
        {"action": "forget", "elapsed_ms": 30.0, "prompt_changed": True, "action_taken": "refit"},
        {"action": "forget", "elapsed_ms": 20.0, "prompt_changed": True, "action_taken": "replace_example"},
        {"action": "fit", "elapsed_ms": 5000},
    ]
    got = cost_inputs_from_audit(entries, _inputs())
    assert got.erase_forget_s == pytest.approx(0.02)
    assert got.prompt_change_rate == pytest.approx(2 / 3)
    assert got.refit_share == pytest.approx(1 / 3)
    assert got.forget_samples == 3
    assert got.zero_shot_query_s == 0.1  # untouched fields survive


def test_cost_inputs_from_audit_without_forgets_keeps_base():
    base = _inputs()
    assert cost_inputs_from_audit([{"action": "fit"}], base) is base


@pytest.mark.parametrize(
    "bad",
    [
        dict(sisa_shards=0),
        dict(prompt_change_rate=1.5),
        dict(queries_per_deletion=-1),
        dict(n_records=-3),
        dict(erase_query_s=float("nan")),
    ],
)
def test_invalid_inputs_are_domain_errors(bad):
    with pytest.raises(InvalidParameter):
        holistic_cost(_inputs(**bad))


def test_measure_inference_with_fake_generators():
    from erase_cli.cost import measure_inference
    from erase_cli.llm import FakeGenerator

    made = []

    def factory():
        made.append(FakeGenerator())
        return made[-1]

    manifest = {"examples": [{"input": "two plus two", "target": "four"}, {"input": "one plus one", "target": "two"}]}
    got = measure_inference(
        manifest,
        None,
        [{"input": "three plus one", "choices": ["four", "x"]}, {"input": "five minus one"}],
        generator_factory=factory,
        repeats=2,
        warmup=1,
    )
    # One generator per prompt, so queries alternate without rebuilding a prefix; the erase one
    # evaluates its prefix twice: once to load and size, once timed as the rebuild.
    zero, demo = made
    assert zero.prefix == "" and zero.prefix_evaluations == 1 and demo.prefix_evaluations == 2
    # The fake counts whitespace words: "Q: two plus two\nA: four" has 6 per example.
    assert got["prefix_tokens"] == 12
    assert got["tokens_per_example"] == 6
    assert got["erase_query_s"] >= 0 and got["zero_shot_query_s"] >= 0
    assert got["per_token_inference_s"] == got["prefix_rebuild_s"] / 12
    assert got["extra_query_s"]["n"] == 2 and got["extra_query_s"]["unit"] == "question"
    assert (got["repeats"], got["warmup"], got["questions"]) == (2, 1, 2)
    inputs = CostInputs(
        n_records=10,
        **{
            k: got[k]
            for k in (
                "erase_query_s",
                "zero_shot_query_s",
                "prefix_rebuild_s",
                "per_token_inference_s",
                "tokens_per_example",
            )
        },
    )
    assert holistic_cost(inputs)["methods"]["sisa"]["per_example_train_s"] >= 0


class Clock:
    """A fake clock that only the timed generators move."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def timed_factory(clock, *, per_prefix_word=0.0, noise=0.0, drift=0.0, seed=0):
    """Fake generators whose queries take 10 ms + per_prefix_word * prefix words + noise, and,
    with `drift`, a bit longer at every call (a machine getting busier)."""
    import random

    from erase_cli.llm import FakeGenerator

    rng = random.Random(seed)
    calls = [0]

    class Timed(FakeGenerator):
        def _spend(self):
            calls[0] += 1
            clock.t += (
                0.01
                + per_prefix_word * len((self.prefix or "").split())
                + rng.uniform(-noise, noise)
                + drift * calls[0]
            )

        def score(self, query, choices):
            self._spend()
            return super().score(query, choices)

        def generate(self, query, max_tokens, stop):
            self._spend()
            return super().generate(query, max_tokens, stop)

    return Timed


MANIFEST = {"examples": [{"input": f"example {i}", "target": "t"} for i in range(4)]}
QUESTIONS = [{"input": f"question {i}"} for i in range(12)]


def test_a_real_extra_cost_has_an_interval_above_zero():
    from erase_cli.cost import extra_query_cost, measure_inference

    clock = Clock()
    got = measure_inference(
        MANIFEST,
        None,
        QUESTIONS,
        clock=clock,
        repeats=3,
        generator_factory=timed_factory(clock, per_prefix_word=1e-4, noise=1e-4),
    )
    from erase_cli.prompt import PromptFormat, prefix_text

    x = got["extra_query_s"]
    expected = 1e-4 * len(prefix_text(PromptFormat(), MANIFEST["examples"]).split())
    assert 0 < x["low"] < expected < x["high"]
    assert extra_query_cost(x) == (x["mean"], "measured")


def test_no_difference_spans_zero_and_counts_as_zero():
    from erase_cli.cost import extra_query_cost, measure_inference

    clock = Clock()
    got = measure_inference(
        MANIFEST, None, QUESTIONS, clock=clock, repeats=3, generator_factory=timed_factory(clock, noise=2e-3, seed=3)
    )
    x = got["extra_query_s"]
    assert x["low"] < 0 < x["high"]
    counted, why = extra_query_cost(x)
    assert counted == 0.0 and "spans 0" in why


def test_alternating_order_cancels_drift():
    """A machine that slows down at every call makes whichever prompt goes second look dearer;
    alternating the order per question and repetition cancels it."""
    from erase_cli.cost import measure_inference

    clock = Clock()
    got = measure_inference(
        MANIFEST, None, QUESTIONS, clock=clock, repeats=2, generator_factory=timed_factory(clock, drift=1e-3)
    )
    assert got["extra_query_s"]["mean"] == pytest.approx(0.0, abs=1e-12)


def test_warmup_queries_are_not_timed():
    from erase_cli.cost import measure_inference

    clock = Clock()
    first = [True]
    Timed = timed_factory(clock)

    class SlowFirst(Timed):
        def generate(self, query, max_tokens, stop):
            if first[0]:  # a cold start: the very first query is 100x slower
                first[0] = False
                clock.t += 1.0
            return super().generate(query, max_tokens, stop)

    got = measure_inference(MANIFEST, None, QUESTIONS, clock=clock, repeats=1, warmup=1, generator_factory=SlowFirst)
    assert got["zero_shot_query_s"] == pytest.approx(0.01)


def test_t_interval():
    from erase_cli.cost import mean_interval, t975

    got = mean_interval([1.0, 2.0, 3.0])
    half = 4.303 / 3**0.5
    assert got == pytest.approx({"mean": 2.0, "low": 2.0 - half, "high": 2.0 + half, "n": 3})
    assert mean_interval([5.0]) == {"mean": 5.0, "low": None, "high": None, "n": 1}
    assert t975(31) == pytest.approx(2.0395, abs=1e-4)
    assert t975(120) == pytest.approx(1.9799, abs=1e-4)


@pytest.mark.parametrize(
    "interval, counted, note",
    [
        ({"mean": 0.002, "low": 0.001, "high": 0.003}, 0.002, "measured"),
        ({"mean": -0.001, "low": -0.003, "high": 0.001}, 0.0, "spans 0"),
        ({"mean": 0.001, "low": -0.001, "high": 0.003}, 0.0, "spans 0"),
        ({"mean": -0.002, "low": -0.003, "high": -0.001}, -0.002, "below 0"),
        ({"mean": -0.002, "low": None, "high": None}, 0.0, "no interval"),
    ],
)
def test_extra_query_cost_counts_only_what_the_interval_supports(interval, counted, note):
    from erase_cli.cost import extra_query_cost

    got, why = extra_query_cost(interval)
    assert got == counted and note in why


def test_holistic_cost_uses_the_counted_extra_query_cost():
    out = holistic_cost(_inputs(extra_query_s=0.0))
    assert out["methods"]["erase"]["dI_s"] == 0.0
    assert out["methods"]["erase"]["H_s"] == pytest.approx(1.02)


@pytest.mark.parametrize(
    "field, flag",
    [
        ("queries_per_deletion", "--queries-per-deletion"),
        ("sisa_epochs", "--sisa-epochs"),
        ("train_multiplier", "--train-multiplier"),
        ("per_token_inference_s", "--per-token-s"),
        ("finetuned_query_s", "--finetuned-query-s"),
    ],
)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_infinite_or_nan_parameters_name_their_flag(field, flag, value):
    with pytest.raises(InvalidParameter, match=f"^{flag} .* is not a finite number"):
        holistic_cost(_inputs(**{field: value}))


def test_round_sig():
    from erase_cli.cost import round_sig

    got = round_sig({"a": 0.000123456, "b": [1234567.8, 2.0], "c": 3, "d": None, "e": True, "f": -0.98765, "g": 0.0})
    assert got == {"a": 0.0001235, "b": [1235000.0, 2.0], "c": 3, "d": None, "e": True, "f": -0.9877, "g": 0.0}


# --------------------------------------------------------------------------- the command


def _digits(value: float) -> int:
    """Significant digits of a float as JSON writes it."""
    text = repr(value).lower().split("e")[0].replace("-", "").replace(".", "").lstrip("0")
    return len(text.rstrip("0")) if "." in repr(value) else len(text)


def _floats(obj):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _floats(v)


def test_cost_on_a_store_with_fake_generators(tmp_path, monkeypatch, capsys):
    from helpers import build_store, make_records

    import erase_cli.cost as cost_module
    from erase_cli import cli, service

    store = tmp_path / "store"
    build_store(store, make_records(30, dim=8), tmp_path)
    clock = Clock()
    original = cost_module.measure_inference
    monkeypatch.setattr(cost_module, "measure_inference", lambda *a, **kw: original(*a, clock=clock, **kw))
    got = service.cost(
        store,
        n_questions=10,
        repeats=2,
        warmup=1,
        queries_per_deletion=1234567.0,
        sisa_epochs=2.123456,
        generator_factory=timed_factory(clock, noise=2e-3, seed=1),
    )
    # What the user gave is echoed exactly; only measured and derived numbers are rounded.
    assert got["queries_per_deletion"] == got["inputs"]["queries_per_deletion"] == 1234567.0
    assert got["inputs"]["sisa_epochs"] == 2.123456
    got["queries_per_deletion"] = got["inputs"]["queries_per_deletion"] = 1.0
    got["inputs"]["sisa_epochs"] = 1.0
    x = got["extra_query"]
    assert x["spans_zero"] is True and x["counted_s"] == 0.0 and x["n"] == 10
    assert got["methods"]["erase"]["dI_s"] == 0.0
    assert got["methods"]["erase"]["H_s"] == got["methods"]["erase"]["U_s"]
    assert "no forget yet" in got["warnings"][0]
    assert all(_digits(v) <= 4 for v in _floats(got)), got

    # People read the interval, never a bare negative mean as if it were a cost.
    capsys.readouterr()
    cli._show_cost(got)
    out = capsys.readouterr().out
    assert "I − I0: not distinguishable from 0 (95% interval -" in out and "counted as 0" in out
    assert f"mean {x['mean_s']}" not in out
    # With a real difference the mean is shown with its interval.
    got = service.cost(
        store,
        n_questions=10,
        repeats=2,
        warmup=1,
        generator_factory=timed_factory(clock, per_prefix_word=1e-4, noise=1e-5),
    )
    assert got["extra_query"]["spans_zero"] is False and got["methods"]["erase"]["dI_s"] > 0
    cli._show_cost(got)
    out = capsys.readouterr().out
    assert f"I − I0: {cli._secs(got['extra_query']['mean_s'])} (95% interval" in out


def test_cost_refuses_infinite_parameters_before_measuring(tmp_path):
    from helpers import build_store, make_records, refused

    store = tmp_path / "store"
    build_store(store, make_records(10, dim=8), tmp_path, k=2)
    for args, flag in (
        (["--queries-per-deletion", "inf"], "--queries-per-deletion"),
        (["--sisa-epochs", "nan"], "--sisa-epochs"),
        (["--per-token-s", "-inf"], "--per-token-s"),
    ):
        # --model names no file: the refusal must come before any model is looked for.
        refused(
            ["cost", *args, "--model", str(tmp_path / "none.gguf"), "--store", str(store)],
            store,
            kind=InvalidParameter.kind,
            mentions=[flag, "finite"],
        )
