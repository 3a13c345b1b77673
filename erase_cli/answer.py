"""The core of `erase ask`: answer questions with the fitted prompt and a cached prefix (SPEC 3)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from erase_cli.errors import InvalidInput, InvalidParameter, NotFound
from erase_cli.llm import Generator, LlamaGenerator, model_identity
from erase_cli.prompt import PromptFormat, prefix_text, query_text
from erase_cli.records import normalise_vector
from erase_cli.routing import PromptChoice


@dataclass(frozen=True)
class Question:
    input: str
    choices: list[str] | None = None
    # A unit float32 vector's values (a tuple keeps the question comparable), for routing on a
    # store ingested with --vector-field.
    vector: tuple[float, ...] | None = None


def cache_file_name(prompt_digest: str, model_id: str) -> str:
    """Cache files are named by what makes them valid, so a changed prompt or model never hits."""
    return f"{prompt_digest}-{model_id}.kv"


def ask(
    questions: Iterable[Question],
    *,
    choose: Callable[[Question], PromptChoice],
    fmt: PromptFormat,
    model_path: str,
    cache_dir: Path | None,
    save_cache: Callable[[str, Callable[[], None]], None] | None,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    max_tokens: int = 64,
    generator_factory: Callable[..., Generator] = LlamaGenerator,
) -> Iterator[dict]:
    """Answer each question in order, loading the model once (and only if there is a question).

    `choose(question)` gives the prompt (routing.PromptChoice: the global prompt or a route's).
    A prompt's KV state is read from `cache_dir / cache_file_name(digest, model)` when present;
    otherwise it is evaluated and handed to `save_cache(digest, write)`, which must call `write()`
    only while that prompt is still one the fit serves (the store does so under its lock after
    re-checking). Consecutive questions on the same prompt reuse the prefix in memory. Each answer:
    `{"question", "answer", "choices" (best first; only with choices), "cache": {"hit",
    "tokens_evaluated"}, "erase": {"mode", "route", "prompt_digest"}}`; `hit` is false only for a
    query that paid for evaluating its prefix.
    """
    if max_tokens < 1:
        raise InvalidParameter(f"--max-tokens {max_tokens} must be at least 1")
    if n_ctx is not None and n_ctx < 1:
        raise InvalidParameter(f"--n-ctx {n_ctx} must be at least 1")
    if n_threads is not None and n_threads < 1:
        raise InvalidParameter(f"--threads {n_threads} must be at least 1")
    return _answers(
        questions,
        choose,
        fmt,
        model_path,
        cache_dir,
        save_cache,
        dict(n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers),
        max_tokens,
        generator_factory,
    )


def _answers(
    questions, choose, fmt, model_path, cache_dir, save_cache, model_options, max_tokens, generator_factory
) -> Iterator[dict]:
    stop = [fmt.separator] if fmt.separator else []
    generator = None
    current = None  # digest of the prompt whose prefix the generator holds
    prefix_cost, prefix_hit = 0, True  # tokens spent on a prefix, charged to the next query
    for question in questions:
        choice = choose(question)
        if generator is None:
            generator = generator_factory(model_path, **model_options)
            model_id = model_identity(model_path)
        if choice.prompt_digest != current:
            cache_file = None
            if cache_dir is not None:
                cache_file = Path(cache_dir) / cache_file_name(choice.prompt_digest, model_id)
            info = generator.set_prefix(prefix_text(fmt, choice.examples), cache_file)
            prefix_hit, prefix_cost = info.loaded, info.tokens_evaluated
            current = choice.prompt_digest
            if not info.loaded and cache_file is not None and save_cache is not None:
                save_cache(current, lambda g=generator, f=cache_file: g.save_prefix(f))  # called at once
        query = query_text(fmt, question.input, question.choices)
        result: dict = {"question": question.input}
        if question.choices:
            scored = generator.score(query, question.choices)
            # Stable sort: equal scores keep the order the choices were given in.
            ranked = sorted(scored, key=lambda item: -item[1])
            result["answer"] = ranked[0][0]
            result["choices"] = [{"text": text, "score": total, "score_mean": mean} for text, total, mean in ranked]
            evaluated = generator.last_tokens_evaluated
        else:
            text, evaluated = generator.generate(query, max_tokens, stop)
            result["answer"] = text.strip()
        result["cache"] = {"hit": prefix_hit, "tokens_evaluated": evaluated + prefix_cost}
        result["erase"] = choice.to_json()
        prefix_cost, prefix_hit = 0, True
        yield result


def read_questions(path_or_dash: str | Path) -> list[Question]:
    """Questions from a file ("-" = stdin): one plain question per line, or JSONL objects with
    `input` and optional `choices`. Blank lines are skipped; bad lines name their number."""
    source = "stdin" if str(path_or_dash) == "-" else str(path_or_dash)
    try:
        if source == "stdin":
            data = sys.stdin.buffer.read()
        else:
            data = Path(path_or_dash).read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"question file {source!r} does not exist; pass an existing file or '-' for stdin") from exc
    except IsADirectoryError as exc:
        raise InvalidInput(f"question file {source!r} is a directory; pass a file") from exc
    questions = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{source}, line {number}: not valid UTF-8; save the file as UTF-8") from exc
        if line:
            questions.append(_parse_question(line, source, number))
    return questions


def _parse_question(line: str, source: str, number: int) -> Question:
    where = f"{source}, line {number}"
    if not line.startswith("{"):
        return Question(line)
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{where}: invalid JSON ({exc}); fix the line or give the question as plain text") from exc
    text = obj.get("input") if isinstance(obj, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"{where}: needs a non-empty string field 'input'")
    choices = obj.get("choices")
    vector = None
    if obj.get("vector") is not None:
        try:
            vector = tuple(normalise_vector(obj["vector"]).tolist())
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}") from None
    return Question(text, None if choices is None else check_choices(choices, where), vector)


def check_choices(choices: object, where: str = "--choices") -> list[str]:
    """A valid choice list: non-empty, distinct, non-blank strings."""
    if not isinstance(choices, list) or not choices:
        raise InvalidInput(f"{where}: 'choices' must be a non-empty list of strings")
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise InvalidInput(f"{where}: every choice must be a non-empty string")
    if len(set(choices)) != len(choices):
        raise InvalidInput(f"{where}: choices must be distinct")
    return list(choices)
