"""Issue 11 `erase serve`: answers over HTTP from one warm process against a process per question
and one `ask --from-file` process, with 1 and 4 concurrent clients, and the time from a forget's
return to the first answer from the new prompt.

    python bench/serve.py [--records 300] [--questions 16] [--processes 4] [--forgets 4]
                          [--threads 2] [--max-tokens 8] [--quick]

The store: the first --records records of sample_data/support_intents.jsonl, ingested with the
bundled MiniLM and fitted at the defaults (routed prompts). The questions: the next records'
inputs, answered by greedy generation of at most --max-tokens tokens everywhere. Traffic goes to
127.0.0.1 only; every phase is bounded by its count of requests and a time limit.
"""

from __future__ import annotations

import argparse
import os
import queue
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, VENV_BIN, log, now_utc, write_results  # noqa: E402

ERASE = str(VENV_BIN / "erase")
SAMPLE = ROOT / "sample_data" / "support_intents.jsonl"
LIMIT_S = 600  # no single phase may run longer than this


def erase(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([ERASE, *args], capture_output=True, text=True, env=env, check=True, timeout=LIMIT_S)


def quantiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "mean_s": statistics.fmean(ordered),
    }


class Served:
    """`erase serve --port 0 --json` in its own process, and clients of it."""

    def __init__(self, store: Path, threads: int, max_tokens: int, env: dict, log_file: Path):
        argv = ["serve", "--store", str(store), "--port", "0", "--json", "--threads", str(threads)]
        argv += ["--max-tokens", str(max_tokens)]
        with open(log_file, "w") as err:
            self.proc = subprocess.Popen([ERASE, *argv], stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("erase serve did not start: " + log_file.read_text())
        self.url = orjson.loads(line)["url"]
        self.api_key, self.admin_key = env["ERASE_API_KEY"], env["ERASE_ADMIN_KEY"]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key, max_retries=0, timeout=LIMIT_S)

    def forget(self, ids: list[str]) -> dict:
        import urllib.request

        req = urllib.request.Request(self.url + "/v1/erase/forget", data=orjson.dumps({"ids": ids}))
        req.add_header("Authorization", f"Bearer {self.admin_key}")
        with urllib.request.urlopen(req, timeout=LIMIT_S) as resp:
            return orjson.loads(resp.read())

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


def ask_http(client: openai.OpenAI, question: str, max_tokens: int) -> dict:
    reply = client.completions.create(model="erase", prompt=question, max_tokens=max_tokens)
    return (reply.model_extra or {})["erase"]


def concurrent(served: Served, questions: list[str], clients: int, max_tokens: int) -> tuple[float, list[float]]:
    """`clients` threads share the questions; returns (wall seconds, per-request latencies)."""
    todo: queue.Queue[str] = queue.Queue()
    for q in questions:
        todo.put(q)
    latencies: list[float] = []
    lock = threading.Lock()

    def loop() -> None:
        client = served.client()
        while True:
            try:
                q = todo.get_nowait()
            except queue.Empty:
                return
            t = time.perf_counter()
            ask_http(client, q, max_tokens)
            with lock:
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIMIT_S)
    return time.perf_counter() - t0, latencies


def route_demo(store: Path, route: int | None) -> str:
    """The id of the first demonstration of `route` (of the global prompt when None)."""
    manifest = orjson.loads((store / "manifest.json").read_bytes())
    if route is None:
        return manifest["examples"][0]["id"]
    return next(r for r in manifest["routes"] if r["cluster"] == route)["examples"][0]["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--processes", type=int, default=4, help="questions answered by one `erase ask` each")
    parser.add_argument("--forgets", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="smaller: 120 records, 6 questions, 2 of the rest")
    args = parser.parse_args()
    if args.quick:
        args.records, args.questions, args.processes, args.forgets = 120, 6, 2, 2
    started = now_utc()
    lines = SAMPLE.read_text().splitlines(keepends=True)
    if args.records + args.questions > len(lines):
        raise SystemExit(f"{SAMPLE.name} has {len(lines)} records; ask for fewer")
    questions = [orjson.loads(line)["input"] for line in lines[args.records : args.records + args.questions]]
    mt = str(args.max_tokens)
    env = {
        **os.environ,
        "ERASE_API_KEY": secrets.token_hex(16),
        "ERASE_ADMIN_KEY": secrets.token_hex(16),
        "HF_HUB_OFFLINE": "1",
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data, store = tmp / "data.jsonl", tmp / "store"
        data.write_text("".join(lines[: args.records]))
        erase("ingest", str(data), "--store", str(store), env=env)
        erase("fit", "--store", str(store), env=env)
        log(f"store: {args.records} records fitted")

        # The CLI's two ways today: a process per question, and one process for all. A first
        # untimed pass builds and saves every route's prefix, as the server's warm-up pass does.
        qfile = tmp / "questions.txt"
        qfile.write_text("".join(q.replace("\n", " ") + "\n" for q in questions))
        ask_all = ["ask", "--from-file", str(qfile), "--store", str(store), "--max-tokens", mt]
        erase(*ask_all, "--threads", str(args.threads), env=env)
        per_process = []
        for q in questions[: args.processes]:
            t = time.perf_counter()
            erase("ask", q, "--store", str(store), "--max-tokens", mt, "--threads", str(args.threads), env=env)
            per_process.append(time.perf_counter() - t)
        t = time.perf_counter()
        erase(*ask_all, "--threads", str(args.threads), env=env)
        from_file_s = time.perf_counter() - t
        log(f"CLI: per process median {statistics.median(per_process):.2f} s; --from-file {from_file_s:.1f} s")

        t = time.perf_counter()
        served = Served(store, args.threads, args.max_tokens, env, tmp / "serve.log")
        startup_s = time.perf_counter() - t
        try:
            client = served.client()
            for q in questions:  # warm-up: every route's prefix built once, as in the CLI runs
                ask_http(client, q, args.max_tokens)
            sequential = []
            for q in questions:
                t = time.perf_counter()
                ask_http(client, q, args.max_tokens)
                sequential.append(time.perf_counter() - t)
            wall4, latencies4 = concurrent(served, questions, 4, args.max_tokens)
            log(f"HTTP: sequential median {statistics.median(sequential):.3f} s; 4 clients {wall4:.1f} s")

            # Forget a demonstration of the route a question uses, then ask that question at once.
            after_forget, generations_ok = [], 0
            for q in questions[: args.forgets]:
                route = ask_http(client, q, args.max_tokens)["route"]
                report = served.forget([route_demo(store, route)])
                t = time.perf_counter()
                got = ask_http(client, q, args.max_tokens)
                after_forget.append(time.perf_counter() - t)
                generations_ok += got["generation"] == report["generation"]
            if generations_ok != len(after_forget):
                raise SystemExit("an answer after a forget did not come from the forget's generation")
        finally:
            exit_code = served.stop()

        # The CLI's path from a forget's return to an answer: a new `erase ask` process.
        cli_after_forget = []
        for q in questions[args.forgets : 2 * args.forgets]:
            out = erase("ask", q, "--store", str(store), "--max-tokens", mt, "--json", env=env).stdout
            route = orjson.loads(out)["erase"]["route"]
            erase("forget", route_demo(store, route), "--store", str(store), env=env)
            t = time.perf_counter()
            erase("ask", q, "--store", str(store), "--max-tokens", mt, "--threads", str(args.threads), env=env)
            cli_after_forget.append(time.perf_counter() - t)

    seq, c4 = quantiles(sequential), quantiles(latencies4)
    proc = quantiles(per_process)
    http_after, cli_after = quantiles(after_forget), quantiles(cli_after_forget)
    per_q_from_file = from_file_s / len(questions)
    results = {
        "records": args.records,
        "questions": len(questions),
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "server_startup_s": startup_s,
        "server_exit_code": exit_code,
        "cli_per_process": proc,
        "cli_from_file_total_s": from_file_s,
        "http_sequential": seq,
        "http_4_clients": {"wall_s": wall4, "per_request": c4, "requests_per_s": len(questions) / wall4},
        "http_forget_to_answer": http_after,
        "cli_forget_to_answer": cli_after,
    }
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    table = [
        ["`erase ask` per question (new process)", ms(proc["median_s"]), f"{1 / proc['median_s']:.2f}", "reference"],
        ["`erase ask --from-file` (one process)", ms(per_q_from_file), f"{1 / per_q_from_file:.2f}",
         f"{proc['median_s'] / per_q_from_file:.1f}x"],
        ["HTTP, 1 client (sequential)", ms(seq["median_s"]), f"{1 / seq['mean_s']:.2f}",
         f"{proc['median_s'] / seq['median_s']:.1f}x"],
        ["HTTP, 4 concurrent clients", f"{ms(c4['median_s'])} (p95 {ms(c4['p95_s'])})",
         f"{len(questions) / wall4:.2f}", f"{proc['median_s'] * len(questions) / wall4:.1f}x throughput"],
        ["forget returned -> answer, HTTP", ms(http_after["median_s"]), "",
         f"{cli_after['median_s'] / http_after['median_s']:.1f}x faster"],
        ["forget returned -> answer, new `erase ask`", ms(cli_after["median_s"]), "", "reference"],
    ]  # fmt: skip
    write_results(
        "serve",
        started=started,
        summary=(
            f"`erase serve` on the bundled models, {args.threads} threads, {args.records} sample records "
            f"(routed prompts), {len(questions)} questions, greedy answers of at most {args.max_tokens} "
            f"tokens; server start to listening {startup_s:.1f} s."
        ),
        timed_region=(
            "per question: from sending to the full answer (HTTP: openai client over 127.0.0.1 after a "
            "warm-up pass over the questions; CLI: process spawn to exit, after an untimed --from-file pass "
            "that saved every route's prefix; --from-file: the whole process "
            "divided by the questions); after a forget: from the forget's return (HTTP response, or "
            "`erase forget` exit) to the full answer of a question whose route lost a demonstration"
        ),
        results=results,
        header=["path", "latency (median)", "answers/s", "vs a process per question"],
        table=table,
        notes=[
            "One model context takes the requests one at a time, so 4 clients queue: throughput stays about "
            "that of one client and each request's latency grows with the queue.",
            "After a forget the server rebuilds the changed route's prefix once (in memory); a new `erase ask` "
            "also loads the model and the embedder, then rebuilds and saves that prefix.",
            f"Every answer after a forget reported the forget's generation ({generations_ok} of "
            f"{len(after_forget)}); the server drained and exited {exit_code} on SIGTERM.",
        ],
    )


if __name__ == "__main__":
    main()
