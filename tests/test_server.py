"""`erase serve` (issue 11) with a deterministic fake model: a real uvicorn server on a loopback
port, driven over real HTTP by the official openai client and by plain requests. The same server
on the bundled models is tested in test_serve_e2e.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import uvicorn
from helpers import clean_env, erase, http

from erase_cli import generation, service
from erase_cli.answer import Answerer
from erase_cli.llm import FakeGenerator
from erase_cli.server import STATUS, ServeOptions, check_options, create_app

QUESTION = "text marker TXT05X"
API_KEY = "api-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


class Served:
    """A running server: its base URL and what it serves."""

    def __init__(self, url: str, root: Path, answerer: Answerer, app):
        self.url, self.root, self.answerer, self.app = url, root, answerer, app

    def request(self, method: str, path: str, body: bytes | dict | None = None, key: str | None = None):
        return http(self.url + path, method, body, key, timeout=30)

    def client(self, key: str | None = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=30)


@contextmanager
def serving(root: Path, model: str, options: ServeOptions, factory=FakeGenerator) -> Iterator[Served]:
    answerer = Answerer(root, model=model, generator_factory=factory, allow_stale=True)
    answerer.allow_stale = not options.refuse_stale
    app = create_app(answerer, options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Served(f"http://127.0.0.1:{port}", root, answerer, app)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def served(text_store, model):
    with serving(text_store, model, ServeOptions(api_key=API_KEY, admin_key=ADMIN_KEY)) as s:
        yield s


# -- answering ---------------------------------------------------------------------------------


def test_completion_carries_the_prompt_and_generation_it_came_from(served):
    raw = served.client().completions.with_raw_response.create(model="any", prompt=QUESTION, max_tokens=8)
    completion = raw.parse()
    extra = completion.model_extra or {}
    chosen = service.show_prompt(served.root, QUESTION)
    assert extra["erase"]["prompt_digest"] == chosen.prompt_digest == raw.headers["x-erase-prompt-digest"]
    assert extra["erase"]["generation"] == served.answerer.generation == raw.headers["x-erase-generation"]
    assert extra["erase"]["mode"] == "routed" and extra["cache"]["tokens_evaluated"] > 0
    assert raw.headers["cache-control"] == "no-store"
    direct = served.answerer.answer(QUESTION)
    assert completion.choices[0].text == direct.answer and completion.choices[0].finish_reason == "stop"
    assert completion.model == "fake.gguf" and completion.object == "text_completion"


def test_chat_answers_the_one_user_message(served):
    chat = served.client().chat.completions.create(model="any", messages=[{"role": "user", "content": QUESTION}])
    assert chat.choices[0].message.content == served.answerer.answer(QUESTION).answer
    assert chat.choices[0].message.role == "assistant"
    assert (chat.model_extra or {})["erase"]["prompt_digest"] == service.show_prompt(
        served.root, QUESTION
    ).prompt_digest


@pytest.mark.parametrize("chat", [False, True])
def test_streamed_pieces_add_up_to_the_whole_answer(served, chat):
    client = served.client()
    if chat:
        stream = client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": QUESTION}], stream=True
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
    else:
        chunks = list(client.completions.create(model="any", prompt=QUESTION, stream=True))
        text = "".join(c.choices[0].text for c in chunks)
    assert len(chunks) > 2  # the fake model makes one piece per character
    assert text == served.answerer.answer(QUESTION).answer
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all((c.model_extra or {})["erase"]["generation"] == served.answerer.generation for c in chunks)


def test_max_tokens_and_stop_reach_the_model(served):
    seen = {}

    class Spy(FakeGenerator):
        def generate(self, query, max_tokens, stop, on_text=None):
            seen.update(max_tokens=max_tokens, stop=list(stop))
            return super().generate(query, max_tokens, stop, on_text)

    with serving(served.root, served.answerer.model_path, ServeOptions(), Spy) as s:
        s.client(None).completions.create(model="any", prompt=QUESTION, max_tokens=5, stop=["XYZ"])
    assert seen["max_tokens"] == 5 and seen["stop"][-1] == "XYZ" and len(seen["stop"]) == 2  # and the separator


def test_erase_answer_is_the_ask_json_object(served):
    status, headers, body = served.request(
        "POST", "/v1/erase/answer", {"question": QUESTION, "choices": ["L0", "L10"]}, API_KEY
    )
    assert status == 200, body
    assert body == served.answerer.answer(QUESTION, ["L0", "L10"]).to_json() | {"cache": body["cache"]}
    assert headers["X-Erase-Prompt-Digest"] == body["erase"]["prompt_digest"]


def test_health_needs_no_key_and_names_the_fit(served):
    status, headers, body = served.request("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["fit"] == "fresh"
    assert body["generation"] == served.answerer.generation and body["model"] == "fake.gguf"
    assert headers["Cache-Control"] == "no-store"
    models = served.client().models.list()
    assert [m.id for m in models.data] == ["fake.gguf"]


# -- forget and status ----------------------------------------------------------------------------


def test_http_forget_reports_its_generation_and_the_next_answer_follows(served):
    before = served.client().completions.create(model="any", prompt=QUESTION)
    victim = service.show_prompt(served.root, QUESTION).examples[-1]["id"]
    status, _, dry = served.request("POST", "/v1/erase/forget", {"ids": [victim], "dry_run": True}, ADMIN_KEY)
    assert status == 200 and dry["ids"] == [{"id": victim, "status": "would_forget"}]
    assert dry["generation"] == (before.model_extra or {})["erase"]["generation"]
    status, _, report = served.request("POST", "/v1/erase/forget", {"ids": [victim]}, ADMIN_KEY)
    assert status == 200 and report["ids"] == [{"id": victim, "status": "forgotten"}]
    assert report["generation"] > dry["generation"]
    after = served.client().completions.create(model="any", prompt=QUESTION)
    assert (after.model_extra or {})["erase"]["generation"] == report["generation"]
    assert (after.model_extra or {})["erase"]["prompt_digest"] != (before.model_extra or {})["erase"]["prompt_digest"]
    status, _, body = served.request("GET", "/v1/erase/status", key=ADMIN_KEY)
    assert status == 200 and body["records"] == 39 and body["forgotten"] == 1
    assert body["server"]["forgets"] == 1 and body["server"]["reloads"] >= 1 and body["server"]["queue_depth"] == 0


def test_the_cli_forget_report_carries_the_generation(text_store):
    env = clean_env(ERASE_STORE=str(text_store))
    r = erase("forget", "t01", "--json", env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["generation"] == str(generation.read(text_store.resolve()).generation)
    r = erase("forget", "t02", "--dry-run", "--json", env=env)
    assert json.loads(r.stdout)["generation"] == report["generation"]  # a dry run changes nothing


# -- keys, errors, limits ------------------------------------------------------------------------


def test_keys(served):
    assert served.request("GET", "/v1/models")[0] == 401
    status, headers, body = served.request("GET", "/v1/models", key="wrong-key-0123456789")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and body["error"]["code"] == "unauthorized"
    assert served.request("GET", "/v1/models", key=ADMIN_KEY)[0] == 200  # the admin key may answer too
    assert served.request("GET", "/v1/erase/status", key=API_KEY)[0] == 401  # but not the other way round
    with pytest.raises(openai.AuthenticationError):
        served.client("wrong-key-0123456789").completions.create(model="any", prompt=QUESTION)


def test_forget_and_status_are_off_without_an_admin_key(text_store, model):
    with serving(text_store, model, ServeOptions()) as s:
        for method, path in (("POST", "/v1/erase/forget"), ("GET", "/v1/erase/status")):
            status, _, body = s.request(method, path, {"ids": ["t01"]})
            assert status == 403 and body["error"]["code"] == "admin_disabled"
            assert "dry run tells whether an id is stored" in body["error"]["message"]
        assert s.request("POST", "/v1/erase/answer", {"question": QUESTION})[0] == 200  # loopback, no key
    assert service.status(text_store).forgotten == 0


BAD = [
    ("POST", "/v1/completions", b"{not json", 400, "invalid_request"),
    ("POST", "/v1/completions", b"[1, 2]", 400, "invalid_request"),
    ("POST", "/v1/completions", {"model": "m"}, 400, "invalid_request"),
    ("POST", "/v1/completions", {"prompt": "   "}, 400, "invalid_request"),
    ("POST", "/v1/completions", {"prompt": QUESTION, "n": 2}, 400, "invalid_request"),
    ("POST", "/v1/completions", {"prompt": QUESTION, "max_tokens": 0}, 400, "invalid_request"),
    ("POST", "/v1/completions", {"prompt": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_request"),
    ("POST", "/v1/completions", {"prompt": QUESTION, "stream": "yes"}, 400, "invalid_request"),
    ("POST", "/v1/chat/completions", {"messages": []}, 400, "invalid_request"),
    (
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user"}]},
        400,
        "invalid_request",
    ),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "system", "content": "be nice"}]}, 400, "invalid_request"),
    ("POST", "/v1/erase/answer", {"question": QUESTION, "choices": ["a", "a"]}, 400, "invalid_request"),
    ("POST", "/v1/erase/answer", {"question": QUESTION, "vector": [0.0, 1.0]}, 400, "invalid_input"),
    ("POST", "/v1/erase/forget", {"ids": "t01"}, 400, "invalid_request"),
    ("POST", "/v1/erase/forget", {"ids": ["t01"], "dry_run": "no"}, 400, "invalid_request"),
    ("POST", "/v1/completions", b"x" * 5000, 413, "body_too_large"),
    ("GET", "/v1/nothing-here", None, 404, "not_found"),
    ("GET", "/v1/completions", None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize("method,path,body,status,code", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_input_gets_an_openai_error_and_changes_nothing(text_store, model, method, path, body, status, code):
    options = ServeOptions(admin_key=ADMIN_KEY, max_body_bytes=4096)
    with serving(text_store, model, options) as s:
        before = service.status(text_store).to_json()
        got, headers, answer = s.request(method, path, body, ADMIN_KEY)
        assert got == status, answer
        assert answer["error"]["code"] == code and answer["error"]["type"] == STATUS[code][1]
        assert (
            answer["error"]["message"] and "Traceback" not in json.dumps(answer) and ADMIN_KEY not in json.dumps(answer)
        )
        assert headers["Cache-Control"] == "no-store"
        assert {k: v for k, v in service.status(text_store).to_json().items() if k != "cache"} == {
            k: v for k, v in before.items() if k != "cache"
        }


def test_multi_turn_chat_says_why(served):
    with pytest.raises(openai.BadRequestError, match="single-turn"):
        served.client().chat.completions.create(
            model="any",
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"},
                {"role": "user", "content": QUESTION},
            ],
        )


class Blocking(FakeGenerator):
    """Generation waits until released: a long answer that holds the model."""

    release = threading.Event()
    started = threading.Event()

    def generate(self, query, max_tokens, stop, on_text=None):
        Blocking.started.set()
        assert Blocking.release.wait(20)
        return super().generate(query, max_tokens, stop, on_text)


def test_a_full_queue_answers_503_and_health_stays_responsive(text_store, model):
    Blocking.release.clear()
    Blocking.started.clear()
    with serving(text_store, model, ServeOptions(queue_size=1), Blocking) as s:
        results: list = []
        threads = [
            threading.Thread(
                target=lambda: results.append(s.request("POST", "/v1/erase/answer", {"question": QUESTION}))
            )
            for _ in range(2)
        ]
        threads[0].start()
        assert Blocking.started.wait(10)
        threads[1].start()  # waits in the queue
        deadline = time.monotonic() + 10
        while s.app.state.server.counters.waiting < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t0 = time.monotonic()
        status, headers, body = s.request("POST", "/v1/erase/answer", {"question": QUESTION})
        assert status == 503 and headers["Retry-After"] == "1" and body["error"]["code"] == "queue_full"
        assert s.request("GET", "/health")[0] == 200 and time.monotonic() - t0 < 5  # while the model is busy
        Blocking.release.set()
        for t in threads:
            t.join(20)
        assert [r[0] for r in results] == [200, 200]


def test_refuse_stale_answers_409_and_otherwise_stale_is_said(text_store, model, tmp_path):
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "new", "input": "a new one", "target": "L0"}) + "\n")
    service.ingest(text_store, str(more), embedder="fake:16", append=True)
    with serving(text_store, model, ServeOptions(refuse_stale=True)) as s:
        status, _, body = s.request("POST", "/v1/erase/answer", {"question": QUESTION})
        assert status == 409 and body["error"]["code"] == "stale_fit" and "erase fit" in body["error"]["message"]
        assert s.request("GET", "/health")[2]["fit"] == "stale"
    with serving(text_store, model, ServeOptions()) as s:
        status, _, body = s.request("POST", "/v1/erase/answer", {"question": QUESTION})
        assert status == 200 and body["erase"]["stale"] is True


def test_unsafe_options_are_refused_before_anything_loads():
    check_options("127.0.0.1", 8080, ServeOptions())
    check_options("::1", 0, ServeOptions())
    with pytest.raises(ValueError, match="both keys"):
        check_options("0.0.0.0", 8080, ServeOptions(api_key=API_KEY))
    check_options("0.0.0.0", 8080, ServeOptions(api_key=API_KEY, admin_key=ADMIN_KEY))
    with pytest.raises(ValueError, match="port"):
        check_options("127.0.0.1", 70000, ServeOptions())


def test_the_cli_refuses_bad_keys_and_hosts_with_one_line(text_store, tmp_path):
    env = clean_env(ERASE_STORE=str(text_store))
    r = erase("serve", "--host", "0.0.0.0", env=env, timeout=60)
    assert r.returncode == 1 and "both keys" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = erase("serve", env={**env, "ERASE_API_KEY": "short"}, timeout=60)
    assert r.returncode == 1 and "ERASE_API_KEY" in r.stderr and "16 characters" in r.stderr
    r = erase("serve", "--admin-key-file", str(tmp_path / "missing"), env=env, timeout=60)
    assert r.returncode == 1 and "--admin-key-file" in r.stderr
    r = erase("serve", "--api-key", "x", env=env, timeout=60)
    assert r.returncode == 2  # no such option: keys never come from the command line
