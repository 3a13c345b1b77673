"""`erase serve` on the real parts (issue 11): the bundled MiniLM embedder and SmolLM2 model, the
console script in its own process on a free loopback port, driven by the official openai client.
The deletion contract is checked while forgets change the prompt the requests use, and the same
check is shown to fail against a server whose generation check is disabled."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
from helpers import ERASE, ROOT, clean_env, erase, http, snapshot
from test_server import BAD  # the same bad-input matrix as on the fake model

SAMPLE = ROOT / "sample_data" / "support_intents.jsonl"
N_SAMPLE = 160  # as test_end_to_end: a slice keeps embedding time small
API_KEY = "serve-e2e-api-key-0123456789"
ADMIN_KEY = "serve-e2e-admin-key-0123456789"
QUESTIONS = [
    "I want my money back for this order",
    "my card was charged twice",
    "how do I change my delivery address",
    "the app keeps crashing when I log in",
]
# Starts the console script's main with the Answerer's generation check disabled: the contract
# test must catch that server.
NO_CHECK = (
    "import sys; from erase_cli.answer import Answerer; Answerer._refresh = lambda self: False; "
    "from erase_cli.__main__ import main; sys.argv[0] = 'erase'; main()"
)


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("serve")
    data = tmp / "sample.jsonl"
    data.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:N_SAMPLE]))
    root = tmp / "store"
    r = erase("ingest", str(data), "--store", str(root), timeout=300)
    assert r.returncode == 0, r.stderr
    r = erase("fit", "--store", str(root))
    assert r.returncode == 0, r.stderr
    return root


class Process:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url, self.proc, self.log = url, proc, log

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def get(self, path: str, key: str | None = None) -> dict:
        status, _, body = http(self.url + path, key=key)
        assert status == 200, body
        return body

    def forget(self, ids: list[str]) -> dict:
        status, _, body = http(self.url + "/v1/erase/forget", "POST", {"ids": ids}, ADMIN_KEY)
        assert status == 200, body
        return body


@contextmanager
def erase_serve(root: Path, tmp: Path, *, check: bool = True) -> Iterator[Process]:
    """`erase serve --port 0 --json`: the JSON line it prints once listening names the port."""
    argv = ["serve", "--store", str(root), "--port", "0", "--json", "--threads", "2", "--max-tokens", "8"]
    argv += ["--max-body-bytes", "4096"]  # as the bad-input matrix expects
    cmd = [ERASE, *argv] if check else [sys.executable, "-c", NO_CHECK, *argv]
    log = tmp / f"serve-{'check' if check else 'nocheck'}.log"
    env = clean_env(ERASE_API_KEY=API_KEY, ERASE_ADMIN_KEY=ADMIN_KEY, HF_HUB_OFFLINE="1")
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until listening, or "" when it exits first
        assert line, log.read_text()
        ready = json.loads(line)
        server = Process(ready["url"], proc, log)
        assert (
            ready["url"].startswith("http://127.0.0.1:") and ready["generation"] == server.get("/health")["generation"]
        )
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)


@pytest.fixture(scope="module")
def served(sample_store, tmp_path_factory) -> Iterator[Process]:
    with erase_serve(sample_store, tmp_path_factory.mktemp("log")) as server:
        yield server


def test_completion_chat_stream_and_choices_on_the_bundled_models(served):
    client = served.client()
    question = QUESTIONS[0]
    raw = client.completions.with_raw_response.create(model="erase", prompt=question)
    completion = raw.parse()
    erase_obj = (completion.model_extra or {})["erase"]
    assert completion.choices[0].text.strip() and completion.choices[0].finish_reason in ("stop", "length")
    assert erase_obj["mode"] == "routed" and erase_obj["route"] is not None
    assert raw.headers["x-erase-prompt-digest"] == erase_obj["prompt_digest"]
    assert erase_obj["generation"] == served.get("/health")["generation"]
    chat = client.chat.completions.create(model="erase", messages=[{"role": "user", "content": question}])
    assert chat.choices[0].message.content == completion.choices[0].text  # same prompt, greedy
    pieces = list(client.completions.create(model="erase", prompt=question, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == completion.choices[0].text
    assert pieces[-1].choices[0].finish_reason == completion.choices[0].finish_reason
    status, _, scored = http(
        served.url + "/v1/erase/answer", "POST", {"question": question, "choices": ["refund", "shipping"]}, API_KEY
    )
    assert status == 200, scored
    assert scored["answer"] in ("refund", "shipping") and len(scored["choices"]) == 2
    assert scored["erase"]["prompt_digest"] == erase_obj["prompt_digest"]


def test_keys_and_the_bad_input_matrix_on_the_real_server(served, sample_store):
    """Every case gets its documented status and an OpenAI-style error holding no traceback or
    key, and none changes a byte of the store."""
    before = snapshot(sample_store)
    assert http(served.url + "/health")[0] == 200  # no key needed
    for path in ("/v1/models", "/v1/erase/status"):
        assert http(served.url + path)[2]["error"]["code"] == "unauthorized"
    assert http(served.url + "/v1/erase/status", key=API_KEY)[0] == 401  # the admin key only
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="wrong-key-0123456789", max_retries=0).models.list()
    assert [m.id for m in served.client().models.list()] == [served.get("/health")["model"]]
    for method, path, body, status, code in BAD:
        got, headers, answer = http(served.url + path, method, body, ADMIN_KEY)
        assert (got, answer["error"]["code"]) == (status, code), (path, body, answer)
        text = json.dumps(answer)
        assert "Traceback" not in text and ADMIN_KEY not in text and headers["Cache-Control"] == "no-store"
    assert snapshot(sample_store) == before


def contract_violations(server: Process, root: Path, forgets: int = 5) -> tuple[int, int, list[int]]:
    """Requests from two client threads while `forgets` forgets (over HTTP) each remove a
    demonstration of the route the requests use. Every answer must report a generation at least
    that of every forget that returned before its request was sent; after each forget, both
    clients send at least one request before the next. Returns (violations, answers, statuses
    other than 200)."""
    returned: list[str] = []  # generations of the forgets that have returned, in order
    lock = threading.Lock()
    stop = threading.Event()
    results: list[tuple[str, str]] = []  # (floor when sent, generation answered from)
    failures: list[int] = []
    routes: list[int] = []

    def client_loop(question: str) -> None:
        client = server.client()
        while not stop.is_set():
            with lock:
                floor = returned[-1] if returned else ""
            try:
                reply = client.completions.create(model="erase", prompt=question, max_tokens=2)
            except openai.APIStatusError as exc:
                failures.append(exc.status_code)
                continue
            got = (reply.model_extra or {})["erase"]
            with lock:
                results.append((floor, got["generation"]))
                routes.append(got["route"])

    threads = [threading.Thread(target=client_loop, args=(q,)) for q in QUESTIONS[:2]]
    for t in threads:
        t.start()
    changed = []
    try:
        for _ in range(forgets):
            while not routes:
                time.sleep(0.05)
            with lock:
                in_use = routes[-1]  # read once: the clients keep appending
            manifest = json.loads((root / "manifest.json").read_text())
            route = next(r for r in manifest["routes"] if r["cluster"] == in_use)
            report = server.forget([route["examples"][0]["id"]])
            changed.append(in_use in report["batch"]["routes_changed"])
            with lock:
                returned.append(report["generation"])
            # Each client sends a request after the forget returned before the next forget.
            deadline = time.monotonic() + 120
            while sum(floor == report["generation"] for floor, _ in list(results)) < len(threads):
                assert time.monotonic() < deadline and not failures, failures
                time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert sum(changed) >= forgets - 1, changed  # the forgets changed the prompts in use
    violations = sum(generation < floor for floor, generation in results)
    return violations, len(results), failures


def test_every_answer_follows_every_forget_that_returned_before_it(served, sample_store):
    violations, answers, failures = contract_violations(served, sample_store)
    assert answers >= 10 and failures == []
    assert violations == 0


def test_the_contract_test_fails_when_the_generation_check_is_off(sample_store, tmp_path):
    with erase_serve(sample_store, tmp_path, check=False) as server:
        # Two forgets suffice: the first one that changes the route already shows the stale answers.
        violations, answers, failures = contract_violations(server, sample_store, forgets=2)
    assert failures == [] and answers >= 4
    assert violations > 0


def test_sigterm_drains_running_and_queued_requests_then_exits_0(served):
    """Last in this file: it stops the module's server."""
    server = served
    statuses: list[int] = []

    def ask(question: str) -> None:
        reply = server.client().completions.with_raw_response.create(model="erase", prompt=question)
        statuses.append(reply.status_code)

    before = server.get("/v1/erase/status", ADMIN_KEY)["server"]["answered"]
    threads = [threading.Thread(target=ask, args=(q,)) for q in QUESTIONS[:3]]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while True:  # until the server holds all three: one running, the others queued
        counts = server.get("/v1/erase/status", ADMIN_KEY)["server"]
        answered = counts["answered"] - before
        if counts["running"] + counts["queue_depth"] + answered >= 3:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert answered < 3  # some are still to answer when the signal comes
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    assert server.proc.wait(60) == 0, server.log.read_text()
    assert statuses == [200, 200, 200]
