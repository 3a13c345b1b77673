"""What the core's commands return: typed results whose `to_json()` is exactly the JSON object
`--json` prints (SPEC 3's forget report, and the other commands' objects), in the documented key
order.

Each report also reads as that mapping (`report["ids"]`, `"fit" in report`, `dict(report)`), so
library callers written against the earlier dicts keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields


class Report(Mapping):
    """Base of the results: `to_json()` gives the fields in order, nested reports included, but
    for those declared with `metadata={"json": False}` (what only the command line needs)."""

    _OMIT_NONE: tuple[str, ...] = ()  # fields left out of the JSON while they are None

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            value = getattr(self, f.name)
            if f.metadata.get("json") is False or (value is None and f.name in self._OMIT_NONE):
                continue
            out[f.name] = value.to_json() if isinstance(value, Report) else value
        return out

    def __getitem__(self, key: str):
        return self.to_json()[key]

    def __iter__(self):
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


@dataclass(eq=False)
class IngestReport(Report):
    store: str
    ingested: int
    skipped_invalid: list[dict]  # {"line", "message", "ids"}
    skipped_forgotten: list[str]
    stale_fit: bool
    elapsed_ms: float
    # With --scheduler: {"scheduler", "workers", "tasks_by_worker"} (where the embedding ran).
    dask: dict | None = None

    _OMIT_NONE = ("dask",)


@dataclass(eq=False)
class FitReport(Report):
    store: str
    n_records: int
    k: int
    k_eff: int
    eps: float
    dim: int | None
    seed: int
    max_iter: int
    route_size: int | None
    prompt_format: dict  # PROMPT_FIELDS
    reused: list[str]  # parameters and format fields taken from the previous fit
    examples: list[dict]  # {"cluster", "id"}
    routes: list[dict]  # {"cluster", "ids" (nearest first)}
    prompt_digest: str
    state_digest: str
    crossing_estimate: float | None
    warnings: list[str]
    elapsed_ms: float
    # With --scheduler: {"scheduler", "workers", "tasks_by_worker"} (where the passes ran).
    dask: dict | None = None

    _OMIT_NONE = ("dask",)


@dataclass(eq=False)
class ForgetBatch(Report):
    """SPEC 3's `batch`. `prompt_changed_is_estimate` is there for a dry run only."""

    crossings: list[dict]  # {"iteration", "cluster"}
    action: str  # "none", "replace_example" or "refit"
    prompt_changed: bool | None
    purged: list[str]
    dry_run: bool
    elapsed_ms: float | None
    n_forgotten: int
    routes_changed: list[int] = field(default_factory=list)  # clusters whose route prompt changed
    prompt_changed_is_estimate: bool | None = None

    _OMIT_NONE = ("prompt_changed_is_estimate",)


@dataclass(eq=False)
class ForgetReport(Report):
    batch: ForgetBatch
    ids: list[dict] = field(default_factory=list)  # {"id", "status"[, "hint"]}
    # The store generation after the call (generation.py): every answer that starts after the
    # call returned reports this generation or a later one. None while the store has no fit.
    generation: str | None = None


@dataclass(eq=False)
class StatusReport(Report):
    store: str
    format: str
    records: int
    forgotten: int
    embedder: str | None
    dimension: int | None
    size_bytes: int
    fit: dict | None
    counters: dict[str, int]
    cache: dict
    pending: dict | None
    audit_head: str | None


@dataclass(eq=False)
class VerifyReport(Report):
    identical: bool
    differences: list[str]  # for people; they may quote record ids (as repr)
    n_records: int
    state_digest: str
    elapsed_ms: float
    # The record ids the differences may quote, so that --redact-ids can replace them; never in
    # the JSON (the differences are, redacted or not).
    quoted_ids: list[str] = field(default_factory=list, metadata={"json": False})


@dataclass(eq=False)
class RecoverReport(Report):
    store: str
    recovered: dict | None  # {"action", "outcome": "completed" or "rolled_back"}; None: nothing to do


@dataclass(eq=False)
class LogReport(Report):
    """The entries chosen (each exactly as stored) and, when the chain was checked, the verdict.
    `--json` prints it as NDJSON, not as this one object: the entries, then `verdict()`."""

    entries: list[dict]
    total: int  # entries in the whole chain, which is always what is verified
    problems: list[str]
    valid: bool | None  # None: not checked
    head: str | None

    def verdict(self) -> dict:
        return {"verify": {"valid": self.valid, "problems": self.problems, "entries": self.total, "head": self.head}}


@dataclass(eq=False)
class ExportReport(Report):
    store: str
    output: str  # the file, or "-" for stdout
    records: int
    vectors: bool
    bytes: int
    audit_hash: str
    warnings: list[str]
    elapsed_ms: float


@dataclass(eq=False)
class PromptReport(Report):
    """`erase prompt`: the exact text the model would get, and which prompt it is."""

    mode: str  # "routed" or "global"
    route: int | None
    prompt_digest: str
    examples: list[dict]  # {"id", "target"}, in prompt order
    text: str


@dataclass(eq=False)
class CacheUse(Report):
    """An answer's `cache`: `hit` is false only for an answer that paid for evaluating its
    prompt's prefix; `tokens_evaluated` counts those tokens too."""

    hit: bool
    tokens_evaluated: int


@dataclass(eq=False)
class AnswerSource(Report):
    """An answer's `erase` object: the prompt it was answered from and the store generation that
    prompt belonged to (generation.py; None only from a bare answer.Responder, with no store). `stale` is
    true when records were appended after the fit: the fit is still exact for the records it
    covers, but does not cover the new ones."""

    mode: str  # "routed" or "global"
    route: int | None  # the cluster, for a routed answer
    prompt_digest: str
    generation: str | None
    stale: bool


@dataclass(eq=False)
class Answer(Report):
    """One answer of `erase ask` (an NDJSON line of --json) or of `Answerer.answer`."""

    question: str
    answer: str
    choices: list[dict] | None  # {"text", "score", "score_mean"}, best first; only with choices
    cache: CacheUse
    erase: AnswerSource
    warning: str | None = None  # a zero-shot answer: the fit has no demonstrations
    # Why a generated answer ended: "stop" (a stop string, or the model's end) or "length"
    # (max_tokens). The server's finish_reason; not in ask --json.
    finish_reason: str = field(default="stop", metadata={"json": False})

    _OMIT_NONE = ("choices", "warning")
