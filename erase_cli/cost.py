"""Holistic unlearning cost, `erase cost` (SPEC 3c).

For a deployment serving R queries per deletion request, the cost of one request under method M is

    H(M) = U(M) + R * (I(M) - I0)

U = expected cost of one deletion, I = cost of one query, I0 = the zero-shot query cost; all in
seconds on this machine. erase's U and I are measured; SISA's are modelled (labelled so):

    U(erase) = mean forget time from the audit trail (certificate and any refit, as timed)
               + prompt-change rate * time to rebuild the cached prefix
    I(erase) = per-query time with the cached prefix
    U(SISA)  = (N / S) * epochs * per-example training time
               per-example training time = per-token inference time * tokens per example
                                           * train_multiplier (forward + backward ~ 3x forward)
    I(SISA)  = S * fine-tuned query time (an S-model ensemble; a fine-tuned model needs no
               demonstrations, so its query time defaults to I0)

The break-even R is where H(erase) == H(SISA): R* = (U_sisa - U_erase) / (dI_erase - dI_sisa),
reported when R* >= 0, None when the lines never cross for R >= 0.

I - I0 is small next to the noise of one timing, so it is measured as paired differences: after a
warm-up, each question is asked of the demonstration prompt and of the zero-shot prompt in turn
(alternating which goes first), for several repetitions; the interval is a t interval over the
questions' mean differences. When that interval includes 0, the demonstrations add no measurable
query cost on this machine and H counts 0 for them, instead of a negative cost. (Without --choices
the queries generate text, and demonstrations often make the answers shorter than zero-shot ones:
then I - I0 is really below 0, and is counted so.)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from erase_cli.errors import InvalidParameter


@dataclass(frozen=True)
class CostInputs:
    """Every parameter of the cost model; times in seconds. Field docs are in the module docstring."""

    n_records: int
    queries_per_deletion: float = 1000.0
    sisa_shards: int = 5
    sisa_epochs: float = 3.0
    train_multiplier: float = 3.0
    per_token_inference_s: float = 0.0
    tokens_per_example: float = 0.0
    erase_forget_s: float = 0.0
    prompt_change_rate: float = 0.0
    refit_share: float = 0.0
    prefix_rebuild_s: float = 0.0
    erase_query_s: float = 0.0
    zero_shot_query_s: float = 0.0
    finetuned_query_s: float | None = None
    forget_samples: int = 0
    # I - I0 as the model uses it; None = erase_query_s - zero_shot_query_s (see extra_query_cost).
    extra_query_s: float | None = None

    def validate(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            # NaN would slip through a ">= 0" test as False and an infinite R makes H inf or NaN.
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidParameter(f"{_flag(field.name)} {value} is not a finite number; pass a finite value")
        if self.n_records < 0:
            raise InvalidParameter(f"n_records must be 0 or more, got {self.n_records}")
        if self.sisa_shards < 1:
            raise InvalidParameter(f"--sisa-shards must be at least 1, got {self.sisa_shards}; pass e.g. 5")
        for name in (
            "queries_per_deletion",
            "sisa_epochs",
            "train_multiplier",
            "per_token_inference_s",
            "tokens_per_example",
            "erase_forget_s",
            "prefix_rebuild_s",
            "erase_query_s",
            "zero_shot_query_s",
        ):
            value = getattr(self, name)
            if not value >= 0:
                raise InvalidParameter(f"{_flag(name)} must be 0 or more, got {value}")
        for name in ("prompt_change_rate", "refit_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidParameter(f"{name} is a share between 0 and 1, got {value}")
        if self.finetuned_query_s is not None and not self.finetuned_query_s >= 0:
            raise InvalidParameter(f"--finetuned-query-s must be 0 or more, got {self.finetuned_query_s}")


def holistic_cost(inputs: CostInputs) -> dict:
    """H for erase (measured) and SISA (modelled), the break-even R, and every input echoed."""
    inputs.validate()
    r = inputs.queries_per_deletion
    i0 = inputs.zero_shot_query_s

    u_erase = inputs.erase_forget_s + inputs.prompt_change_rate * inputs.prefix_rebuild_s
    di_erase = inputs.erase_query_s - i0 if inputs.extra_query_s is None else inputs.extra_query_s

    per_example_train_s = inputs.per_token_inference_s * inputs.tokens_per_example * inputs.train_multiplier
    u_sisa = (inputs.n_records / inputs.sisa_shards) * inputs.sisa_epochs * per_example_train_s
    finetuned = i0 if inputs.finetuned_query_s is None else inputs.finetuned_query_s
    i_sisa = inputs.sisa_shards * finetuned
    di_sisa = i_sisa - i0

    return {
        "formula": "H(M) = U(M) + R * (I(M) - I0)",
        "queries_per_deletion": r,
        "methods": {
            "erase": {
                "label": "measured",
                "U_s": u_erase,
                "I_s": inputs.erase_query_s,
                "dI_s": di_erase,
                "H_s": u_erase + r * di_erase,
            },
            "sisa": {
                "label": "modelled",
                "U_s": u_sisa,
                "I_s": i_sisa,
                "dI_s": di_sisa,
                "H_s": u_sisa + r * di_sisa,
                "per_example_train_s": per_example_train_s,
            },
        },
        "break_even_queries_per_deletion": break_even(u_erase, di_erase, u_sisa, di_sisa),
        "inputs": dataclasses.asdict(inputs),
    }


# The command-line flag behind each parameter, so that an error names what the user typed.
FLAGS = {
    "queries_per_deletion": "--queries-per-deletion",
    "sisa_shards": "--sisa-shards",
    "sisa_epochs": "--sisa-epochs",
    "train_multiplier": "--train-multiplier",
    "tokens_per_example": "--tokens-per-example",
    "per_token_inference_s": "--per-token-s",
    "finetuned_query_s": "--finetuned-query-s",
}


def _flag(name: str) -> str:
    return FLAGS.get(name, name)


def round_sig(obj, digits: int = 4):
    """`obj` with every float rounded to `digits` significant digits (ints, bools, strings and
    None unchanged): timings on a shared machine are not worth more, and long tails only hide
    the number."""
    if isinstance(obj, float):
        if obj == 0.0 or not math.isfinite(obj):
            return obj
        return round(obj, digits - 1 - math.floor(math.log10(abs(obj))))
    if isinstance(obj, dict):
        return {k: round_sig(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_sig(v, digits) for v in obj]
    return obj


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond, the
# Cornish-Fisher expansion around the normal quantile is within 1e-4.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError("a t interval needs at least 1 degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def mean_interval(values: Sequence[float]) -> dict:
    """Mean with a 95% t interval (low/high None with fewer than 2 values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def extra_query_cost(interval: Mapping) -> tuple[float, str]:
    """I - I0 as the cost model should count it, and why: the measured mean when its interval
    excludes 0, else 0 (a difference that cannot be told from 0 is not counted, and a negative
    mean inside such an interval would read as a negative cost). A mean below 0 with its whole
    interval below is real: demonstrations can make generated answers shorter than zero-shot."""
    mean, low, high = interval["mean"], interval["low"], interval["high"]
    if low is None:
        return 0.0, "one sample, no interval: counted as 0 (use more --questions or --repeats)"
    if low > 0:
        return mean, "measured"
    if high < 0:
        return mean, (
            "measured below 0: erase's queries are cheaper than zero-shot here (its "
            "demonstrations can make generated answers shorter)"
        )
    return 0.0, "interval spans 0: no measurable extra query cost, counted as 0"


def break_even(u_a: float, di_a: float, u_b: float, di_b: float) -> float | None:
    """R >= 0 where u_a + R*di_a == u_b + R*di_b; None if the lines never cross there."""
    slope = di_a - di_b
    if slope == 0.0:
        return 0.0 if u_a == u_b else None
    r = (u_b - u_a) / slope
    return r if r >= 0.0 else None


def cost_inputs_from_audit(entries: Iterable[Mapping], base: CostInputs) -> CostInputs:
    """`base` with erase's deletion cost replaced by what the audit trail measured.

    Averages over the `forget` entries (one per batch, i.e. per deletion request): elapsed_ms,
    the share with prompt_changed, and the share whose action_taken was a refit. With no forget
    entries `base` comes back unchanged (forget_samples = 0 says nothing was measured).
    """
    forgets = [e for e in entries if e.get("action") == "forget"]
    if not forgets:
        return base
    n = len(forgets)
    return dataclasses.replace(
        base,
        erase_forget_s=sum(float(e.get("elapsed_ms") or 0.0) for e in forgets) / n / 1000.0,
        prompt_change_rate=sum(bool(e.get("prompt_changed")) for e in forgets) / n,
        refit_share=sum(e.get("action_taken") == "refit" for e in forgets) / n,
        forget_samples=n,
    )


def measure_inference(
    manifest: Mapping,
    model_path: str | None,
    questions: Sequence[Mapping],
    *,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    max_tokens: int = 16,
    repeats: int = 3,
    warmup: int = 3,
    fmt=None,
    generator_factory=None,
    clock=time.perf_counter,
) -> dict:
    """Time I (cached prefix), I0 (zero-shot), the prefix rebuild and the per-token cost.

    questions: dicts with `input` and optional `choices` (scored) or none (greedy generation).
    Two generators hold the two prompts (llama.cpp maps the model file once, so the weights are
    shared), so that queries can alternate between them without rebuilding a prefix: after
    `warmup` untimed queries on each, every question is asked of both, `repeats` times, the order
    alternating. Returns seconds: erase_query_s and zero_shot_query_s (means), extra_query_s (the
    paired I - I0 with its 95% interval over questions), prefix_rebuild_s (a second evaluation of
    the prefix, the model already loaded), per_token_inference_s and tokens_per_example; these
    fill the matching CostInputs fields. `generator_factory()` makes a generator (tests pass a
    fake; `clock` too); `fmt` defaults to the plain PromptFormat that `ask` uses for a store.
    """
    from erase_cli import prompt

    if not questions:
        raise InvalidParameter("measuring inference cost needs at least one question")
    if repeats < 1:
        raise InvalidParameter(f"--repeats {repeats} must be at least 1")
    if warmup < 0:
        raise InvalidParameter(f"--warmup {warmup} must be 0 or more")
    fmt = fmt or prompt.PromptFormat()
    examples = list(manifest.get("examples", []))
    if generator_factory is None:
        from erase_cli.llm import LlamaGenerator

        def generator_factory():
            return LlamaGenerator(model_path, n_threads=n_threads, n_gpu_layers=n_gpu_layers)

    stop = [fmt.separator]
    texts = [(prompt.query_text(fmt, q["input"], q.get("choices")), q.get("choices")) for q in questions]

    def query(generator, item) -> float:
        text, choices = item
        started = clock()
        if choices:
            generator.score(text, list(choices))
        else:
            generator.generate(text, max_tokens, stop)
        return clock() - started

    zero_gen, erase_gen = generator_factory(), generator_factory()
    zero = zero_gen.set_prefix(prompt.prefix_text(fmt, []))
    demos = prompt.prefix_text(fmt, examples)
    erase_gen.set_prefix(demos)  # loads the model and sizes the context: not a rebuild
    started = clock()
    full = erase_gen.set_prefix(demos)
    prefix_rebuild_s = clock() - started

    for item in (texts * warmup)[:warmup]:  # caches, allocator and branch predictors settle
        query(zero_gen, item)
        query(erase_gen, item)
    zero_s = [[0.0] * len(texts) for _ in range(repeats)]
    erase_s = [[0.0] * len(texts) for _ in range(repeats)]
    for rep in range(repeats):
        for i, item in enumerate(texts):
            # Alternating the order cancels drift (a machine warming up or getting busier).
            if (rep + i) % 2 == 0:
                zero_s[rep][i] = query(zero_gen, item)
                erase_s[rep][i] = query(erase_gen, item)
            else:
                erase_s[rep][i] = query(erase_gen, item)
                zero_s[rep][i] = query(zero_gen, item)
    if len(texts) > 1:
        # Repetitions of one question are not independent draws: the unit is the question.
        diffs = [sum(erase_s[r][i] - zero_s[r][i] for r in range(repeats)) / repeats for i in range(len(texts))]
        unit = "question"
    else:
        diffs = [erase_s[r][0] - zero_s[r][0] for r in range(repeats)]
        unit = "repetition"
    interval = mean_interval(diffs)
    n_timed = repeats * len(texts)

    tokens = full.prefix_tokens
    demo_tokens = max(0, full.prefix_tokens - zero.prefix_tokens)
    return {
        "erase_query_s": sum(map(sum, erase_s)) / n_timed,
        "zero_shot_query_s": sum(map(sum, zero_s)) / n_timed,
        "extra_query_s": {**interval, "unit": unit},
        "prefix_rebuild_s": prefix_rebuild_s,
        "per_token_inference_s": prefix_rebuild_s / tokens if tokens else 0.0,
        "tokens_per_example": demo_tokens / len(examples) if examples else 0.0,
        "prefix_tokens": tokens,
        "questions": len(questions),
        "repeats": repeats,
        "warmup": warmup,
    }
