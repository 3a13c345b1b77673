"""The core of `erase ask` and of the Python API's `Answerer`: answer questions from a store's
fitted prompts with a cached prefix (SPEC 3), following every change of the fit.

`Responder` holds one model and the one prompt prefix it has in memory and answers a question
from a given prompt; `ask()` drives it with a caller's prompt choice (no store), `Answerer` with
the store's current fit. One answer path for both.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from . import generation
from .errors import EraseError, InvalidInput, InvalidParameter, NotFitted, NotFound, StaleFit, StoreLocked
from .llm import Generator, LlamaGenerator, model_identity, resolve_model
from .prompt import PromptFormat, prefix_text, query_text
from .records import normalise_vector
from .reports import Answer, AnswerSource, CacheUse
from .routing import PromptChoice, Router, global_choice, question_embedder, resolve_mode
from .store import CACHE_DIR, open_store


@dataclass(frozen=True)
class Question:
    input: str
    choices: list[str] | None = None
    # A unit float32 vector's values (a tuple keeps the question comparable), for routing on a
    # store ingested with --vector-field.
    vector: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Decoding:
    """How one answer is generated, beyond the Answerer's defaults."""

    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    on_piece: OnPiece | None = None


def cache_file_name(prompt_digest: str, model_id: str) -> str:
    """Cache files are named by what makes them valid, so a changed prompt or model never hits."""
    return f"{prompt_digest}-{model_id}.kv"


SaveCache = Callable[[str, Callable[[], None]], None]
# Hears each new piece of a generated answer, with the prompt it comes from (for streaming).
OnPiece = Callable[[str, AnswerSource], None]


class _Pieces:
    """Turns the generator's growing text into pieces of the answer the Responder returns
    (stripped, cut at the first stop string): a piece is passed on only once no later token can
    change it, so the pieces always add up to the final answer."""

    def __init__(self, send: Callable[[str], None], stop: Sequence[str]):
        self._send = send
        # A stop string not yet complete may have started in the last len(stop) - 1 characters.
        self._hold = max((len(s) for s in stop if s), default=1) - 1
        self.sent = ""

    def grow(self, text: str) -> None:
        text = text.lstrip()
        self._pass_on(text[: max(0, len(text) - self._hold)].rstrip())

    def finish(self, answer: str) -> None:
        self._pass_on(answer)

    def _pass_on(self, stable: str) -> None:
        if len(stable) > len(self.sent) and stable.startswith(self.sent):
            piece, self.sent = stable[len(self.sent) :], stable
            self._send(piece)


class Responder:
    """One model, loaded on the first answer, and the one prompt prefix it holds.

    A prompt's KV state is read from `cache_dir / cache_file_name(digest, model)` when present;
    otherwise it is evaluated and handed to `save_cache(digest, write)`, which must call `write()`
    only while that prompt is still one the fit serves (the store does so under its lock after
    re-checking). Consecutive answers on the same prompt reuse the prefix in memory."""

    def __init__(
        self,
        model_path: str,
        *,
        cache_dir: Path | None,
        save_cache: SaveCache | None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        max_tokens: int = 64,
        generator_factory: Callable[..., Generator] = LlamaGenerator,
    ):
        if max_tokens < 1:
            raise InvalidParameter(f"--max-tokens {max_tokens} must be at least 1")
        if n_ctx is not None and n_ctx < 1:
            raise InvalidParameter(f"--n-ctx {n_ctx} must be at least 1")
        if n_threads is not None and n_threads < 1:
            raise InvalidParameter(f"--threads {n_threads} must be at least 1")
        self.model_path = model_path
        self._cache_dir = cache_dir
        self._save_cache = save_cache
        self._options = dict(n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
        self._max_tokens = max_tokens
        self._factory = generator_factory
        self._generator: Generator | None = None
        self._model_id = ""
        self._current: str | None = None  # digest of the prompt whose prefix the generator holds

    def answer(
        self,
        question: Question,
        choice: PromptChoice,
        fmt: PromptFormat,
        *,
        generation: str | None = None,
        stale: bool = False,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        on_piece: OnPiece | None = None,
    ) -> Answer:
        """`question` answered from `choice`'s prompt: the best of its choices by total
        log-probability, or a greedy generation of at most `max_tokens` (default: the
        Responder's) stopped at the format's separator or any of `stop`. `on_piece` hears a
        generated answer as it grows (a scored one is not streamed)."""
        if max_tokens is not None and max_tokens < 1:
            raise InvalidParameter(f"max_tokens {max_tokens} must be at least 1")
        source = AnswerSource(choice.mode, choice.route, choice.prompt_digest, generation, bool(stale))
        generator = self.load()
        prefix_hit, prefix_cost = True, 0
        if choice.prompt_digest != self._current:
            cache_file = None
            if self._cache_dir is not None:
                cache_file = Path(self._cache_dir) / cache_file_name(choice.prompt_digest, self._model_id)
            self._current = None
            try:
                info = generator.set_prefix(prefix_text(fmt, choice.examples), cache_file)
            except BaseException:
                generator.drop_prefix()  # whatever part of it is in memory belongs to no known prompt
                raise
            self._current = choice.prompt_digest
            prefix_hit, prefix_cost = info.loaded, info.tokens_evaluated
            if not info.loaded and cache_file is not None and self._save_cache is not None:
                self._save_cache(choice.prompt_digest, lambda: generator.save_prefix(cache_file))  # called at once
        query = query_text(fmt, question.input, question.choices)
        ranked = None
        finish = "stop"
        if question.choices:
            # Stable sort: equal scores keep the order the choices were given in.
            scored = sorted(generator.score(query, question.choices), key=lambda item: -item[1])
            ranked = [{"text": choice, "score": total, "score_mean": mean} for choice, total, mean in scored]
            text, evaluated = scored[0][0], generator.last_tokens_evaluated
        else:
            stops = ([fmt.separator] if fmt.separator else []) + [s for s in stop if s]
            pieces = None if on_piece is None else _Pieces(lambda piece: on_piece(piece, source), stops)
            limit = max_tokens or self._max_tokens
            if pieces is None:  # a Generator written before streaming takes no on_text
                text, evaluated = generator.generate(query, limit, stops)
            else:
                text, evaluated = generator.generate(query, limit, stops, on_text=pieces.grow)
            text, finish = text.strip(), generator.last_finish
            if pieces is not None:
                pieces.finish(text)
        return Answer(
            question=question.input,
            answer=text,
            choices=ranked,
            cache=CacheUse(hit=prefix_hit, tokens_evaluated=evaluated + prefix_cost),
            erase=source,
            finish_reason=finish,
        )

    def load(self) -> Generator:
        """The model, loaded now if it is not yet."""
        if self._generator is None:
            self._generator = self._factory(self.model_path, **self._options)
            self._model_id = model_identity(self.model_path)
        return self._generator

    def keep_only(self, digests: Collection[str]) -> None:
        """Drop the prefix in memory unless its prompt is one of `digests` (those still served):
        a forgotten demonstration must not stay in the model's memory."""
        if self._current is not None and self._current not in digests:
            assert self._generator is not None  # a prefix is held only by a loaded generator
            self._generator.drop_prefix()
            self._current = None

    @property
    def prompt_held(self) -> str | None:
        """The digest of the prompt whose prefix is in memory."""
        return self._current

    def close(self) -> None:
        """Let the model go (and the prefix with it)."""
        self._generator, self._current = None, None


def _quiet(_msg: str) -> None:
    pass


class Answerer:
    """Answers many questions from a store's fit, and follows every change of that fit.

    It holds the model (loaded on the first question) and, in routed mode, the store's embedder
    (loaded on the first question that needs it) for as long as it lives, so each answer costs
    only its own tokens. `mode`: "routed" answers each question from the route of the cluster
    nearest it, "global" from the one global prompt, "auto" routes when the fit has routes and
    the store embeds its own questions (routing.resolve_mode).

    The deletion contract: an answer starts when it takes the model (answers are serialised).
    Before it starts, the Answerer compares the store's generation stamp (two stats, no lock)
    with the one it answers from and, when it moved, re-reads the fit without the lock
    (generation.py), re-resolving the mode and the routes. So once a forget has returned, every
    answer that starts afterwards is answered from the new prompts and reports the new
    `generation`; an answer already running finishes with the prompt it started with. A prefix
    whose prompt the new fit no longer serves is dropped from the model's memory when the answer
    holding it ends (the Answerer checks again after each answer, and `refresh()` does it on
    demand), and is never saved: a new prefix is saved under the store's lock only after
    re-checking that its prompt is still served, and only if the lock is free at once, so a long
    write never stalls an answer.

    A fit made stale by `ingest --append` is still exact for the records it covers: with
    `allow_stale` it keeps answering, with `"stale": true` in each answer's `erase` object;
    without, every answer raises StaleFit (as `erase ask` does). Threads may share one
    Answerer: its answers are serialised (one model context), each whole.
    """

    def __init__(
        self,
        store: str | Path,
        *,
        mode: str = "auto",
        model: str | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        max_tokens: int = 64,
        lock_timeout: float = 60.0,
        key_file: Path | None = None,
        allow_stale: bool = False,
        on_message: Callable[[str], None] | None = None,
        generator_factory: Callable[..., Generator] | None = None,
        device: str | None = None,
    ):
        """`device`: where the embedder of routed questions runs (auto, cpu or cuda)."""
        self._label = Path(store)  # as the caller named it, for messages
        self._say = on_message or _quiet
        self._lock_timeout = lock_timeout
        self._key_file = key_file
        self.mode = mode
        self.allow_stale = allow_stale
        with open_store(store, write=False, lock_timeout=lock_timeout, on_message=self._say, key_file=key_file) as st:
            self.root = st.root
            snapshot = generation.read_locked(st)
        self._check(snapshot)
        assert snapshot.manifest is not None  # _check: a fit has a manifest
        resolve_mode(mode, snapshot.manifest)  # a bad mode is an error before any question
        self._responder = Responder(
            resolve_model(model),
            cache_dir=self.root / CACHE_DIR,
            save_cache=self._save_cache,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            max_tokens=max_tokens,
            **({} if generator_factory is None else {"generator_factory": generator_factory}),
        )
        self._embed = question_embedder(snapshot.embedder, device)  # loads the embedder on first use
        self._lock = threading.Lock()
        self._closed = False
        self.reloads = 0  # times the fit was read again because the store's generation moved
        self._install(snapshot)
        self._peeked = snapshot

    # -- the store's fit -----------------------------------------------------------------------

    def _check(self, snapshot: generation.Snapshot) -> None:
        if snapshot.fit is None:
            raise NotFitted(f"store {self._label} has no fit yet; run 'erase fit'")
        if snapshot.fit.stale and not self.allow_stale:
            raise StaleFit(f"the fit of store {self._label} is stale (records were appended since); run 'erase fit'")

    def _install(self, snapshot: generation.Snapshot) -> None:
        self._snapshot = snapshot
        self._plan: tuple[Callable[[Question], PromptChoice], PromptFormat] | None = None  # built on the next answer
        self._responder.keep_only(snapshot.manifest.digests if snapshot.manifest is not None else ())

    def refresh(self, *, wait: bool = True) -> bool:
        """Follow the store: when its generation stamp moved, re-read the fit (without the lock)
        and drop a prefix the new fit no longer serves. True when the stamp had moved. Every
        answer does this before it starts and after it ends; a server also calls it while idle
        (`wait=False`: do nothing while an answer runs, it follows on its own), so that a
        forgotten prompt's prefix leaves memory without waiting for a question."""
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            return False if self._closed else self._refresh()
        finally:
            self._lock.release()

    def _refresh(self) -> bool:
        if generation.stamp(self.root) == self._snapshot.stamp:
            return False
        self._install(
            generation.read(self.root, key_file=self._key_file, lock_timeout=self._lock_timeout, on_message=self._say)
        )
        self.reloads += 1
        return True

    def peek(self) -> generation.Snapshot:
        """The store's fit as the next answer would find it, read without waiting for a running
        answer (a health check's view; nothing is reloaded into the model)."""
        seen = self._peeked
        if generation.stamp(self.root) != seen.stamp:
            seen = generation.read(
                self.root, key_file=self._key_file, lock_timeout=self._lock_timeout, on_message=self._say
            )
            self._peeked = seen
        return seen

    def _make_plan(self) -> tuple[Callable[[Question], PromptChoice], PromptFormat]:
        """How this fit picks a question's prompt (in the mode the fit allows), and its format."""
        manifest = self._snapshot.manifest
        assert manifest is not None  # _check passed
        fmt = PromptFormat.from_stored(manifest.prompt)
        if resolve_mode(self.mode, manifest) == "global":
            choice = global_choice(manifest)
            return (lambda question: choice), fmt
        router = Router(manifest, self._snapshot.dim or 0, self._embed)

        def choose(question: Question) -> PromptChoice:
            vector = None if question.vector is None else np.asarray(question.vector, dtype=np.float32)
            return router.choose(question.input, vector)

        return choose, fmt

    def _save_cache(self, digest: str, write: Callable[[], None]) -> None:
        try:
            # lock_timeout 0: a cache is worth saving only if it costs the answer nothing.
            with open_store(self.root, write=True, lock_timeout=0, on_message=self._say, key_file=self._key_file) as st:
                current = st.manifest()
                if current is None or digest not in current.digests:
                    self._say("the prompt changed while answering (a forget ran); the prefix cache was not saved")
                    return
                st.cache_dir().mkdir(mode=0o700, exist_ok=True)
                write()
        except StoreLocked:
            self._say("the store is busy (another command holds its lock); the prefix cache was not saved this time")

    # -- answering -----------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model now, and the store's embedder when questions are routed, so that the
        first question pays for neither (a server does this before it takes connections)."""
        with self._lock:
            self._responder.load()
            manifest = self._snapshot.manifest
            if self._embed is not None and manifest is not None and resolve_mode(self.mode, manifest) == "routed":
                self._embed("a question")  # question_embedder loads the model on its first call

    def answer(
        self,
        question: str,
        choices: Sequence[str] | None = None,
        vector=None,
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        on_piece: OnPiece | None = None,
    ) -> Answer:
        """Answer one question: the best of `choices` when given, else a generated answer of at
        most `max_tokens` (default: the Answerer's), also stopped at any of `stop`; `on_piece`
        hears it as it grows. `vector` (a list or 1-D array of numbers, normalised here) routes
        the question on a store ingested with --vector-field."""
        if not isinstance(question, str):
            raise InvalidInput(f"the question must be a string, not {type(question).__name__}")
        checked = None if choices is None else check_choices(list(choices), "choices")
        unit = None
        if vector is not None:
            raw = vector if isinstance(vector, np.ndarray) else list(vector)
            unit = tuple(normalise_vector(raw).tolist())
        if isinstance(stop, str) or not all(isinstance(s, str) for s in stop):
            raise InvalidInput("stop must be a list of strings")
        return self._answer(Question(question, checked, unit), Decoding(max_tokens, tuple(stop), on_piece))

    def answer_many(self, questions: Iterable[Question]) -> Iterator[Answer]:
        """Answer each question in order (read_questions makes them from a file), lazily: each
        answer starts when the next one is asked for, and follows the fit as it is then."""
        for question in questions:
            yield self._answer(question)

    def _answer(self, question: Question, decoding: Decoding | None = None) -> Answer:
        with self._lock:
            if self._closed:
                raise ValueError("this Answerer is closed; make a new one")
            self._follow()
            try:
                return self._answer_now(question, decoding or Decoding())
            finally:
                # Drop the prefix at once if the fit moved on while the answer ran; an error
                # here is the next answer's to report.
                with contextlib.suppress(EraseError, OSError):
                    self._follow()

    def _follow(self) -> None:
        """Bring the fit up to date; when that fails, what is current cannot be told: keep no
        prefix in memory."""
        try:
            self._refresh()
        except BaseException:
            self._responder.keep_only(())
            raise

    def _answer_now(self, question: Question, decoding: Decoding) -> Answer:
        snapshot = self._snapshot
        self._check(snapshot)
        assert snapshot.manifest is not None and snapshot.fit is not None  # _check passed
        if self._plan is None:
            self._plan = self._make_plan()
        choose, fmt = self._plan
        result = self._responder.answer(
            question,
            choose(question),
            fmt,
            generation=str(snapshot.generation),
            stale=snapshot.fit.stale,
            max_tokens=decoding.max_tokens,
            stop=decoding.stop,
            on_piece=decoding.on_piece,
        )
        if not snapshot.manifest.examples:
            result.warning = (
                f"the fit of store {self._label} has no demonstrations (it was made with no records): "
                "this is a zero-shot answer; ingest records and run 'erase fit'"
            )
        return result

    # -- what it serves ------------------------------------------------------------------------

    @property
    def generation(self) -> str:
        """The store generation the next answer would start from, as of the last check."""
        return str(self._snapshot.generation)

    @property
    def stale(self) -> bool:
        return bool(self._snapshot.fit and self._snapshot.fit.stale)

    @property
    def model_path(self) -> str:
        return self._responder.model_path

    def close(self) -> None:
        """Free the model and the prefix it holds; the Answerer answers no more."""
        with self._lock:
            self._closed = True
            self._responder.close()

    def __enter__(self) -> Answerer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
