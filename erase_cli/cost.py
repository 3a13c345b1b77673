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
"""

from __future__ import annotations

import dataclasses
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

    def validate(self) -> None:
        if self.n_records < 0:
            raise InvalidParameter(f"n_records must be 0 or more, got {self.n_records}")
        if self.sisa_shards < 1:
            raise InvalidParameter(
                f"--sisa-shards must be at least 1, got {self.sisa_shards}; pass e.g. 5"
            )
        for name in ("queries_per_deletion", "sisa_epochs", "train_multiplier",
                     "per_token_inference_s", "tokens_per_example", "erase_forget_s",
                     "prefix_rebuild_s", "erase_query_s", "zero_shot_query_s"):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                raise InvalidParameter(f"{name} must be 0 or more, got {value}")
        for name in ("prompt_change_rate", "refit_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidParameter(f"{name} is a share between 0 and 1, got {value}")
        if self.finetuned_query_s is not None and not self.finetuned_query_s >= 0:
            raise InvalidParameter(
                f"finetuned_query_s must be 0 or more, got {self.finetuned_query_s}"
            )


def holistic_cost(inputs: CostInputs) -> dict:
    """H for erase (measured) and SISA (modelled), the break-even R, and every input echoed."""
    inputs.validate()
    r = inputs.queries_per_deletion
    i0 = inputs.zero_shot_query_s

    u_erase = inputs.erase_forget_s + inputs.prompt_change_rate * inputs.prefix_rebuild_s
    di_erase = inputs.erase_query_s - i0

    per_example_train_s = (
        inputs.per_token_inference_s * inputs.tokens_per_example * inputs.train_multiplier
    )
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
                "H_s": u_erase + r * di_erase,
            },
            "sisa": {
                "label": "modelled",
                "U_s": u_sisa,
                "I_s": i_sisa,
                "H_s": u_sisa + r * di_sisa,
                "per_example_train_s": per_example_train_s,
            },
        },
        "break_even_queries_per_deletion": break_even(u_erase, di_erase, u_sisa, di_sisa),
        "inputs": dataclasses.asdict(inputs),
    }


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
    fmt=None,
    generator=None,
) -> dict:
    """Time I (cached prefix), I0 (zero-shot), the prefix rebuild and the per-token cost.

    questions: dicts with `input` and optional `choices` (scored) or none (greedy generation).
    Returns seconds: erase_query_s, zero_shot_query_s, prefix_rebuild_s, per_token_inference_s,
    tokens_per_example; these fill the matching CostInputs fields. `generator` replaces the
    model (tests); `fmt` defaults to the plain PromptFormat that `ask` uses for a store.
    """
    from erase_cli import prompt

    if not questions:
        raise InvalidParameter("measuring inference cost needs at least one question")
    fmt = fmt or prompt.PromptFormat()
    examples = list(manifest.get("examples", []))
    if generator is None:
        from erase_cli.llm import LlamaGenerator

        generator = LlamaGenerator(model_path, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
    stop = [fmt.separator]

    def per_query() -> float:
        started = time.perf_counter()
        for q in questions:
            text = prompt.query_text(fmt, q["input"], q.get("choices"))
            if q.get("choices"):
                generator.score(text, list(q["choices"]))
            else:
                generator.generate(text, max_tokens, stop)
        return (time.perf_counter() - started) / len(questions)

    # Zero-shot first: its set_prefix also loads the model, which must not count as a rebuild.
    zero = generator.set_prefix(prompt.prefix_text(fmt, []))
    zero_shot_query_s = per_query()

    started = time.perf_counter()
    full = generator.set_prefix(prompt.prefix_text(fmt, examples))
    prefix_rebuild_s = time.perf_counter() - started
    erase_query_s = per_query()

    tokens = full.prefix_tokens
    demo_tokens = max(0, full.prefix_tokens - zero.prefix_tokens)
    return {
        "erase_query_s": erase_query_s,
        "zero_shot_query_s": zero_shot_query_s,
        "prefix_rebuild_s": prefix_rebuild_s,
        "per_token_inference_s": prefix_rebuild_s / tokens if tokens else 0.0,
        "tokens_per_example": demo_tokens / len(examples) if examples else 0.0,
        "prefix_tokens": tokens,
        "questions": len(questions),
    }
