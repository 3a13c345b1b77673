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
        {"action": "forget", "elapsed_ms": 20.0, "prompt_changed": True,
         "action_taken": "replace_example"},
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
    "bad", [dict(sisa_shards=0), dict(prompt_change_rate=1.5), dict(queries_per_deletion=-1),
            dict(n_records=-3), dict(erase_query_s=float("nan"))]
)
def test_invalid_inputs_are_domain_errors(bad):
    with pytest.raises(InvalidParameter):
        holistic_cost(_inputs(**bad))


def test_measure_inference_with_fake_generator():
    from erase_cli.cost import measure_inference
    from erase_cli.llm import FakeGenerator

    gen = FakeGenerator()
    manifest = {"examples": [{"input": "two plus two", "target": "four"},
                             {"input": "one plus one", "target": "two"}]}
    got = measure_inference(manifest, None, [{"input": "three plus one", "choices": ["four", "x"]},
                                             {"input": "five minus one"}], generator=gen)
    # The fake counts whitespace words: "Q: two plus two\nA: four" has 6 per example.
    assert got["prefix_tokens"] == 12
    assert got["tokens_per_example"] == 6
    assert gen.prefix_evaluations == 2
    assert got["erase_query_s"] >= 0 and got["zero_shot_query_s"] >= 0
    assert got["per_token_inference_s"] == got["prefix_rebuild_s"] / 12
    inputs = CostInputs(n_records=10, **{k: got[k] for k in (
        "erase_query_s", "zero_shot_query_s", "prefix_rebuild_s", "per_token_inference_s",
        "tokens_per_example")})
    assert holistic_cost(inputs)["methods"]["sisa"]["per_example_train_s"] >= 0
