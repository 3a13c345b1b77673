"""`erase serve`: an OpenAI-compatible HTTP server over one Answerer (issue 11).

The server adds HTTP and nothing else: every answer comes from `answer.Answerer`, every forget
from `service.forget`, so the deletion contract is the Answerer's (see there, and the README's
"Serve answers over HTTP"): a request starts when it takes the model, and an answer that starts
after a forget returned is answered from the new prompts and reports the new generation.

How it is put together, and why:
- One model context, so model calls run one at a time on a single worker thread, in arrival
  order. At most `queue_size` requests wait for it; one more gets 503 with Retry-After rather
  than an unbounded wait. The event loop never runs a model call, so `/health` answers while a
  long generation runs.
- A forget (HTTP) runs on another thread and takes the store's lock as `erase forget` does;
  answering never needs that lock (the Answerer reads the store's generation without it).
- While idle, the server asks the Answerer to follow the store every IDLE_REFRESH_SECONDS, so
  that the prefix of a prompt a forget retired leaves memory even when no question comes.
- Keys are compared in constant time and never logged or echoed. Errors are OpenAI's shape,
  `{"error": {"message", "type", "code"}}`, with the statuses in STATUS (the README's table);
  an unexpected failure is logged on the server and answered with a message that holds neither
  a traceback nor the request's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import service
from .answer import Answerer, check_choices
from .errors import (
    EraseError,
    InvalidInput,
    InvalidParameter,
    PromptTooLong,
    StaleFit,
    StoreChanged,
    StoreLocked,
)
from .reports import Answer, AnswerSource

log = logging.getLogger("erase.serve")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_QUEUE_SIZE = 16
DEFAULT_MAX_BODY_BYTES = 1 << 20  # a question, or a batch of ids to forget: 1 MiB is plenty
IDLE_REFRESH_SECONDS = 0.5
RETRY_AFTER_SECONDS = 1
MAX_STOP_STRINGS = 4  # as OpenAI's API

# Every error the server answers with: kind -> (HTTP status, OpenAI error type). The README's
# table is this one.
STATUS: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "invalid_request_error"),
    "invalid_input": (400, "invalid_request_error"),
    "invalid_parameter": (400, "invalid_request_error"),
    "prompt_too_long": (400, "invalid_request_error"),
    "unauthorized": (401, "authentication_error"),
    "admin_disabled": (403, "permission_error"),
    "not_found": (404, "not_found_error"),
    "method_not_allowed": (405, "invalid_request_error"),
    "stale_fit": (409, "conflict_error"),
    "body_too_large": (413, "invalid_request_error"),
    "queue_full": (503, "server_busy_error"),
    "store_locked": (503, "server_busy_error"),
    "shutting_down": (503, "server_busy_error"),
    "server_error": (500, "server_error"),
}
_BUSY = ("queue_full", "store_locked", "shutting_down")


class HTTPFailure(Exception):
    """An error answer: `kind` is a key of STATUS and the error's `code`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    @classmethod
    def of(cls, exc: EraseError) -> HTTPFailure:
        if isinstance(exc, (InvalidInput, InvalidParameter, PromptTooLong)):
            return cls(exc.kind, str(exc))
        if isinstance(exc, StaleFit):
            return cls("stale_fit", f"{exc} (this server runs with --refuse-stale)")
        if isinstance(exc, (StoreLocked, StoreChanged)):
            return cls("store_locked", f"{exc}; try again")
        return cls("server_error", f"{exc}")  # an EraseError's message names the store's problem, no data

    def response(self) -> Response:
        status, kind = STATUS[self.kind]
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.kind in _BUSY else {}
        if self.kind == "unauthorized":
            headers["WWW-Authenticate"] = "Bearer"
        return _json(status, _error_body(self.message, kind, self.kind), headers)


def _error_body(message: str, kind: str, code: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": code}}


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


@dataclass
class ServeOptions:
    """What `erase serve` was started with (the CLI resolves flags, variables and defaults)."""

    api_key: str | None = None
    admin_key: str | None = None
    refuse_stale: bool = False
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    lock_timeout: float = 60.0
    key_file: Path | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def check_options(host: str, port: int, options: ServeOptions) -> None:
    """Refuse what would be unsafe or cannot work, before anything is loaded."""
    if not 0 <= port <= 65535:
        raise InvalidParameter(f"--port {port} is not a TCP port; use 1-65535 (0: any free port)")
    if options.queue_size < 0:
        raise InvalidParameter(f"--queue-size {options.queue_size} must be 0 or more")
    if options.max_body_bytes < 1024:
        raise InvalidParameter(f"--max-body-bytes {options.max_body_bytes} must be at least 1024")
    if not is_loopback(host) and not (options.api_key and options.admin_key):
        raise InvalidParameter(
            f"--host {host} is reachable from other machines, so both keys are required: set "
            "ERASE_API_KEY and ERASE_ADMIN_KEY (or --api-key-file and --admin-key-file), or bind 127.0.0.1"
        )


@dataclass
class Counters:
    """What /v1/erase/status reports about the server itself."""

    started: float = field(default_factory=time.time)
    requests: int = 0
    answered: int = 0
    forgets: int = 0
    errors: int = 0
    running: int = 0  # model calls running (0 or 1)
    waiting: int = 0  # model calls queued behind it


class ModelQueue:
    """Model calls, one at a time on one thread, in arrival order; a bounded wait."""

    def __init__(self, size: int, counters: Counters):
        self._size = size
        self._counters = counters
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="erase-model")

    def submit(self, call: Callable[[], Answer]) -> asyncio.Future[Answer]:
        c = self._counters
        if c.running + c.waiting > self._size:
            raise HTTPFailure(
                "queue_full",
                f"{c.running + c.waiting} requests are already running or waiting for the model "
                f"(--queue-size {self._size}); retry after {RETRY_AFTER_SECONDS} s",
            )
        c.waiting += 1

        def run() -> Answer:
            c.waiting -= 1  # a request starts when it takes the model
            c.running += 1
            try:
                return call()
            finally:
                c.running -= 1

        return asyncio.wrap_future(self._pool.submit(run))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


Streamed = tuple[AnswerSource, AsyncIterator[tuple[str, Answer | None]]]


class Server:
    """The application's state: one Answerer, its queue, the options and the counters."""

    def __init__(self, answerer: Answerer, options: ServeOptions):
        self.answerer = answerer
        self.options = options
        self.counters = Counters()
        self.queue = ModelQueue(options.queue_size, self.counters)
        self.model_id = Path(answerer.model_path).name
        self.draining = False

    # -- checks --------------------------------------------------------------------------------

    def authorize(self, request: Request, *, admin: bool) -> None:
        if admin and not self.options.admin_key:
            raise HTTPFailure(
                "admin_disabled",
                "forget and status are off: start erase serve with an admin key (ERASE_ADMIN_KEY or "
                "--admin-key-file) to use them; they need a key of their own because even a dry run "
                "tells whether an id is stored",
            )
        wanted = self.options.admin_key if admin else self.options.api_key
        if wanted is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        accepted = [wanted] if admin else [wanted, self.options.admin_key or ""]
        ok = scheme.lower() == "bearer" and any(
            key and hmac.compare_digest(token.strip().encode(), key.encode()) for key in accepted
        )
        if not ok:
            what = "the admin key" if admin else "the API key"
            raise HTTPFailure("unauthorized", f"this endpoint needs {what}: send 'Authorization: Bearer KEY'")

    async def body(self, request: Request) -> dict:
        limit = self.options.max_body_bytes
        too_big = HTTPFailure("body_too_large", f"the request body is over {limit} bytes (--max-body-bytes); send less")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise too_big
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise HTTPFailure("invalid_request", "the request body is not valid JSON; send a JSON object") from None
        if not isinstance(parsed, dict):
            raise HTTPFailure("invalid_request", "the request body must be a JSON object")
        return parsed

    # -- answering -----------------------------------------------------------------------------

    def _answer_call(self, body: dict, question: str, on_piece=None) -> Callable[[], Answer]:
        max_tokens = _max_tokens(body)
        stop = _stops(body)
        choices = body.get("choices")
        vector = body.get("vector")

        def call() -> Answer:
            return self.answerer.answer(question, choices, vector, max_tokens=max_tokens, stop=stop, on_piece=on_piece)

        return call

    async def answer(self, body: dict, question: str) -> Answer:
        try:
            result = await self.queue.submit(self._answer_call(body, question))
        except EraseError as exc:
            raise HTTPFailure.of(exc) from None
        self.counters.answered += 1
        return result

    async def stream(self, body: dict, question: str) -> Streamed:
        """The source of the answer once it has started, and its pieces as they come; the last
        item carries the whole Answer. Errors before the first piece are raised here, so they get
        their own HTTP status; later ones end the stream with an error event."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()

        def on_piece(piece: str, source: AnswerSource) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("piece", piece, source))

        future = self.queue.submit(self._answer_call(body, question, on_piece))
        future.add_done_callback(lambda f: events.put_nowait(("done", f, None)))
        first = await events.get()
        if first[0] == "done":
            exc = first[1].exception()
            if isinstance(exc, EraseError):
                raise HTTPFailure.of(exc)
            if exc is not None:
                raise exc
            answer = first[1].result()
            self.counters.answered += 1
            source = answer.erase

            async def whole() -> AsyncIterator[tuple[str, Answer | None]]:
                yield answer.answer, answer

            return source, whole()

        async def rest() -> AsyncIterator[tuple[str, Answer | None]]:
            kind, value, _ = first
            while kind == "piece":
                yield value, None
                kind, value, _ = await events.get()
            answer = value.result()  # raises the failure of a started answer: the stream reports it
            self.counters.answered += 1
            yield "", answer

        return first[2], rest()


def _max_tokens(body: dict) -> int | None:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HTTPFailure("invalid_request", "max_tokens must be a whole number of at least 1")
    return value


def _stops(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise HTTPFailure("invalid_request", "stop must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP_STRINGS:
        raise HTTPFailure("invalid_request", f"stop takes at most {MAX_STOP_STRINGS} strings")
    return stops


def _single(body: dict) -> None:
    if body.get("n", 1) != 1 or body.get("best_of", 1) != 1:
        raise HTTPFailure("invalid_request", "erase gives one answer per request (greedy decoding); send n = 1")


def _completion_question(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise HTTPFailure(
            "invalid_request", "prompt must be the question, one non-empty string (erase builds the rest)"
        )
    return prompt


def _chat_question(body: dict) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise HTTPFailure("invalid_request", "messages must be a non-empty list of message objects")
    if len(messages) != 1 or messages[0].get("role") != "user":
        raise HTTPFailure(
            "invalid_request",
            "erase answers single-turn questions: send exactly one message, from the user "
            "(the prompt is built from the fitted demonstrations, so system messages and earlier turns "
            "cannot be used)",
        )
    content = messages[0].get("content")
    if isinstance(content, list):  # content parts: only text can be asked
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise HTTPFailure("invalid_request", "only text content parts can be asked; send the question as text")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str) or not content.strip():
        raise HTTPFailure("invalid_request", "the user message must hold the question as non-empty text")
    return content


def _erase_fields(answer: Answer) -> dict:
    """What every OpenAI-shaped answer carries beyond OpenAI's fields: the same `erase` and
    `cache` objects as `erase ask --json`."""
    return {"erase": answer.erase.to_json(), "cache": answer.cache.to_json()}


def _answer_headers(source: AnswerSource) -> dict[str, str]:
    return {"X-Erase-Prompt-Digest": source.prompt_digest, "X-Erase-Generation": source.generation or ""}


def _sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def create_app(answerer: Answerer, options: ServeOptions) -> FastAPI:
    """The ASGI application over an Answerer (which it closes on shutdown)."""
    server = Server(answerer, options)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        follow = asyncio.create_task(_follow_while_idle(server))
        try:
            yield
        finally:
            server.draining = True
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
            await asyncio.to_thread(server.queue.close)  # requests still queued are answered first
            answerer.close()

    app = FastAPI(title="erase", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.middleware("http")
    async def no_store(request: Request, call_next):
        server.counters.requests += 1
        try:
            if server.draining:
                raise HTTPFailure("shutting_down", "the server is shutting down; send the request to another one")
            response = await call_next(request)
        except HTTPFailure as failure:
            response = failure.response()
        except Exception:  # noqa: BLE001  # the one place an unexpected failure becomes a 500
            log.exception("unexpected error answering %s %s", request.method, request.url.path)
            response = HTTPFailure("server_error", "internal error; the server's log has the details").response()
        if response.status_code >= 400:
            server.counters.errors += 1
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(HTTPFailure)
    async def failed(_request: Request, failure: HTTPFailure) -> Response:
        return failure.response()

    @app.exception_handler(StarletteHTTPException)
    async def routing_failed(_request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            return HTTPFailure("method_not_allowed", "this endpoint does not take that method").response()
        return HTTPFailure("not_found", "no such endpoint; see the README's list of endpoints").response()

    @app.get("/health")
    async def health() -> Response:
        snapshot = await asyncio.to_thread(answerer.peek)
        fit = snapshot.fit
        manifest = snapshot.manifest
        return _json(
            200,
            {
                "status": "ok",
                "model": server.model_id,
                "mode": answerer.mode,
                "prompt_digest": manifest.prompt_digest if manifest else None,
                "generation": None if snapshot.generation is None else str(snapshot.generation),
                "fit": "stale" if fit and fit.stale else "fresh",
                "refuse_stale": options.refuse_stale,
            },
        )

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        server.authorize(request, admin=False)
        created = int(server.counters.started)
        entry = {"id": server.model_id, "object": "model", "created": created, "owned_by": "erase"}
        return _json(200, {"object": "list", "data": [entry]})

    @app.post("/v1/erase/answer")
    async def erase_answer(request: Request) -> Response:
        server.authorize(request, admin=False)
        body = await server.body(request)
        question = body.get("question")
        if not isinstance(question, str) or not question.strip():
            raise HTTPFailure("invalid_request", "question must be a non-empty string")
        if body.get("choices") is not None:
            try:
                check_choices(body["choices"], "choices")
            except InvalidInput as exc:
                raise HTTPFailure("invalid_request", str(exc)) from None
        answer = await server.answer(body, question)
        return _json(200, answer.to_json(), _answer_headers(answer.erase))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _openai_answer(server, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _openai_answer(server, request, chat=True)

    @app.post("/v1/erase/forget")
    async def forget(request: Request) -> Response:
        server.authorize(request, admin=True)
        body = await server.body(request)
        ids = body.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise HTTPFailure("invalid_request", "ids must be a list of record ids (non-empty strings)")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise HTTPFailure("invalid_request", "dry_run must be true or false")
        try:
            report = await asyncio.to_thread(
                service.forget,
                answerer.root,
                ids,
                dry_run=dry_run,
                lock_timeout=options.lock_timeout,
                key_file=options.key_file,
            )
        except EraseError as exc:
            raise HTTPFailure.of(exc) from None
        server.counters.forgets += 0 if dry_run else 1
        return _json(200, report.to_json())

    @app.get("/v1/erase/status")
    async def status(request: Request) -> Response:
        server.authorize(request, admin=True)
        try:
            report = await asyncio.to_thread(
                service.status, answerer.root, lock_timeout=options.lock_timeout, key_file=options.key_file
            )
        except EraseError as exc:
            raise HTTPFailure.of(exc) from None
        c = server.counters
        counters = {
            "model": server.model_id,
            "mode": answerer.mode,
            "uptime_s": round(time.time() - c.started, 3),
            "requests": c.requests,
            "answered": c.answered,
            "forgets": c.forgets,
            "errors": c.errors,
            "running": c.running,
            "queue_depth": c.waiting,
            "queue_size": options.queue_size,
            "reloads": answerer.reloads,
            "generation": answerer.generation,
        }
        return _json(200, {**report.to_json(), "server": counters})

    return app


async def _openai_answer(server: Server, request: Request, *, chat: bool) -> Response:
    """A completion or chat completion in OpenAI's shape, whole or as server-sent events."""
    server.authorize(request, admin=False)
    body = await server.body(request)
    _single(body)
    question = _chat_question(body) if chat else _completion_question(body)
    if body.get("choices") is not None:
        raise HTTPFailure("invalid_request", "to choose among answers use /v1/erase/answer with 'choices'")
    if body.get("stream", False) is not True and body.get("stream", False) is not False:
        raise HTTPFailure("invalid_request", "stream must be true or false")
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    head = {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": server.model_id,
    }

    def choice(text: str, finish: str | None, *, delta: bool) -> dict:
        out: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if not chat:
            out["text"] = text
        elif delta:
            out["delta"] = {"role": "assistant", "content": text} if text or finish is None else {}
        else:
            out["message"] = {"role": "assistant", "content": text}
        return out

    if not body.get("stream"):
        answer = await server.answer(body, question)
        whole = {**head, "choices": [choice(answer.answer, answer.finish_reason, delta=False)], **_erase_fields(answer)}
        return _json(200, whole, _answer_headers(answer.erase))

    source, pieces = await server.stream(body, question)
    chunk_head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

    async def events() -> AsyncIterator[bytes]:
        try:
            async for text, answer in pieces:
                if answer is None:
                    yield _sse({**chunk_head, "choices": [choice(text, None, delta=True)], "erase": source.to_json()})
                    continue
                if text:
                    yield _sse({**chunk_head, "choices": [choice(text, None, delta=True)], "erase": source.to_json()})
                last = choice("", answer.finish_reason, delta=True)
                yield _sse({**chunk_head, "choices": [last], **_erase_fields(answer)})
        except EraseError as exc:
            failure = HTTPFailure.of(exc)
            yield _sse(_error_body(failure.message, STATUS[failure.kind][1], failure.kind))
        except Exception:  # noqa: BLE001  # the headers are gone: report in the stream, log the rest
            log.exception("unexpected error while streaming an answer")
            yield _sse(_error_body("internal error; the server's log has the details", "server_error", "server_error"))
        yield b"data: [DONE]\n\n"

    headers = {**_answer_headers(source), "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


class _DrainingServer(uvicorn.Server):
    """uvicorn raises a SIGTERM or SIGINT again once its graceful shutdown is over, so the process
    would die of it; here a drained shutdown is a clean exit (0). `on_ready(host, port)` runs once
    the socket listens, with the port actually bound (--port 0 asks for any free one)."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str, int], None]):
        super().__init__(config)
        self._on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_ready(host, port)


async def _follow_while_idle(server: Server) -> None:
    """Let the Answerer follow the store between requests (it skips while an answer runs)."""
    while True:
        await asyncio.sleep(IDLE_REFRESH_SECONDS)
        try:
            await asyncio.to_thread(server.answerer.refresh, wait=False)
        except (EraseError, OSError) as exc:  # the next answer reports it to its client
            log.warning("could not read the store's fit: %s", exc)


def run(
    store: Path,
    *,
    host: str,
    port: int,
    options: ServeOptions,
    mode: str,
    model: str | None,
    n_ctx: int | None,
    n_threads: int | None,
    n_gpu_layers: int,
    max_tokens: int,
    say: Callable[[str], None],
    on_ready: Callable[[dict], None] | None = None,
    device: str | None = None,
) -> None:
    """Load the model (and the embedder, for routed answers, on `device`: auto, cpu or cuda), then
    serve until SIGTERM or SIGINT, which stop taking connections and let running and queued
    requests finish."""
    check_options(host, port, options)
    answerer = Answerer(
        store,
        mode=mode,
        model=model,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_gpu_layers=n_gpu_layers,
        max_tokens=max_tokens,
        device=device,
        lock_timeout=options.lock_timeout,
        key_file=options.key_file,
        allow_stale=True,
        on_message=say,
    )
    answerer.allow_stale = not options.refuse_stale
    try:
        answerer.load()
        app = create_app(answerer, options)
    except BaseException:
        answerer.close()
        raise
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")

    def ready(bound_host: str, bound_port: int) -> None:
        snapshot = answerer.peek()
        url = f"http://{bound_host}:{bound_port}"
        say(
            f"erase serve: {answerer.model_path} at {url}, store {answerer.root}, generation "
            f"{snapshot.generation}; answering key: {'on' if options.api_key else 'off (loopback)'}, "
            f"admin key: {'on' if options.admin_key else 'off'}"
        )
        if on_ready is not None:
            on_ready(
                {
                    "url": url,
                    "host": bound_host,
                    "port": bound_port,
                    "model": answerer.model_path,
                    "store": str(answerer.root),
                    "generation": None if snapshot.generation is None else str(snapshot.generation),
                    "prompt_digest": snapshot.manifest.prompt_digest if snapshot.manifest else None,
                }
            )

    _DrainingServer(config, ready).run()
