"""Benchmark: `erase eval` on the shared BIG-bench tasks and the sample data (SPEC 7, eval).

Runs evaluate.run_eval for every task with one embedder and one model load, then writes
bench/results/eval.json (every number, per-item results included) and bench/results/eval.md.
Timed region per query: prompt scoring or generation only (knn also rebuilds its per-query
prefix, which is its real cost); model load and embedding are outside it.

    .venv/bin/python bench/eval.py --limit 60
    .venv/bin/python bench/eval.py --limit 20 --tasks snarks navigate --no-sample

Resumable: with --resume, tasks already in --out's eval.json are kept and skipped (the file is
rewritten after every task). --methods runs only some methods; --reuse FILE takes the other
methods' per-item results from an earlier eval.json of the same split, limit, k and seed (their
code unchanged since), and the report names that file and its date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine  # noqa: E402  (bench/ is on sys.path when run as a script)

from erase_cli.embed import load_embedder  # noqa: E402
from erase_cli.evaluate import METHODS, paired_difference, run_eval  # noqa: E402
from erase_cli.llm import LlamaGenerator, resolve_model  # noqa: E402

BIGBENCH = Path(os.environ.get("ERASE_BIGBENCH", ROOT.parent / "shared" / "bigbench"))
SAMPLE = ROOT / "sample_data" / "support_intents.jsonl"
TASKS = [
    "intent_recognition",
    "implicatures",
    "movie_recommendation",
    "navigate",
    "snarks",
    "sports_understanding",
    "object_counting",
    "tense",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=60, help="test items per task")
    ap.add_argument("--tasks", nargs="*", default=TASKS)
    ap.add_argument("--no-sample", action="store_true", help="skip sample_data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-k", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=32, help="generation cap (generative tasks)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=None,
        help="only combine these eval.json files (runs split over processes) into --out",
    )
    ap.add_argument("--note", default=None, help="a line for the report")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), help="methods to run")
    ap.add_argument("--reuse", type=Path, default=None, help="earlier eval.json for the methods not run")
    ap.add_argument("--resume", action="store_true", help="keep and skip tasks already in --out's eval.json")
    args = ap.parse_args()
    if args.merge:
        merge(args)
        return

    started = time.time()
    embedder = load_embedder(None)
    model = resolve_model(None)
    generator = LlamaGenerator(model, n_threads=args.threads)
    paths = [(t, BIGBENCH / t / "task.json") for t in args.tasks]
    if not args.no_sample and SAMPLE.is_file():
        paths.append(("sample:" + SAMPLE.stem, SAMPLE))

    results = []
    done_tasks: set[str] = set()
    if args.resume and (args.out / "eval.json").is_file():
        results = orjson.loads((args.out / "eval.json").read_bytes())["tasks"]
        done_tasks = {r["task"] for r in results}
    reused = _reusable(args.reuse)
    for label, path in paths:
        name = label.split(":", 1)[-1]
        if name in done_tasks:
            print(f"{label}: kept from the earlier run", file=sys.stderr, flush=True)
            continue
        t0 = time.time()
        res = run_eval(
            path,
            args.methods,
            limit=args.limit,
            seed=args.seed,
            k=args.k,
            generator=generator,
            embedder=embedder,
            max_tokens=args.max_tokens,
        )
        res["model"] = Path(model).name
        res["wall_s"] = time.time() - t0
        _fill_from(res, reused.get(res["task"]))
        results.append(res)
        accs = " ".join(f"{m}={v['accuracy']:.2f}" for m, v in res["methods"].items())
        print(f"{label}: {accs} ({res['wall_s']:.0f}s)", file=sys.stderr, flush=True)
        _write(args, results, started, model, done=False)
    _write(args, results, started, model, done=True)


def _reusable(path: Path | None) -> dict[str, dict]:
    if path is None:
        return {}
    doc = orjson.loads(path.read_bytes())
    return {t["task"]: {**t, "_from": f"{path.name} of {doc['date_utc']}"} for t in doc["tasks"]}


def _fill_from(res: dict, earlier: dict | None) -> None:
    """Add the methods this run did not run from an earlier run of the same items."""
    if earlier is None:
        return
    if earlier["test_ids"] != res["test_ids"] or earlier["k"] != res["k"] or earlier["seed"] != res["seed"]:
        raise SystemExit(f"{res['task']}: the earlier run used other items, k or seed; run every method")
    taken = [m for m in METHODS if m in earlier["methods"] and m not in res["methods"]]
    methods = {m: res["methods"].get(m) or earlier["methods"][m] for m in METHODS if m in res["methods"] or m in taken}
    res["methods"] = methods
    res["reused"] = {"methods": taken, "from": earlier["_from"]}
    _complete_pairs(res)


def merge(args) -> None:
    """One report from several partial runs (same model and limit), tasks in the usual order."""
    docs = [orjson.loads(p.read_bytes()) for p in args.merge]
    order = {t: i for i, t in enumerate(TASKS)}
    tasks = sorted((t for d in docs for t in d["tasks"]), key=lambda r: order.get(r["task"], 99))
    doc = dict(docs[0])
    doc["command"] = " ; ".join(d["command"] for d in docs)
    doc["date_utc"] = max(d["date_utc"] for d in docs)
    doc["complete"] = all(d["complete"] for d in docs)
    doc["total_wall_s"] = sum(t["wall_s"] for t in tasks)
    doc["parallel_runs"] = len(docs)
    doc["note"] = args.note
    for res in tasks:
        _complete_pairs(res)
    doc["tasks"] = tasks
    doc["summary"] = summary(tasks)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    (args.out / "eval.md").write_text(markdown(doc))


def _complete_pairs(res: dict) -> None:
    """Recompute the paired differences from the per-item results (runs made before a pair
    was added to run_eval get it too)."""
    ms = res["methods"]
    pairs = [("routed", m) for m in ("erase", "knn") if m in ms]
    pairs += [("erase", m) for m in ms if m not in ("erase", "routed")] + [(m, "zero") for m in ms if m != "zero"]
    for a, b in pairs:
        if a in ms and b in ms:
            res["paired"][f"{a}-{b}"] = paired_difference(ms[a]["per_item"]["correct"], ms[b]["per_item"]["correct"])


def summary(results: list[dict]) -> dict:
    """SPEC 7 eval criteria: per task, erase - kmeans interval includes 0 or lies above it; over
    the tasks where some method beats zero-shot (interval above 0), erase - random pooled over
    their items (paired), and the unweighted mean of the per-task means."""
    per_task = {}
    pooled_e, pooled_r, means = [], [], []
    routed_a, routed_b, routed_means = [], [], []
    for res in results:
        ek = res["paired"].get("erase-kmeans")
        beats_zero = [
            m
            for m in res["methods"]
            if m != "zero"
            and (res["paired"].get(f"{m}-zero") or {}).get("low") is not None
            and res["paired"][f"{m}-zero"]["low"] > 0
        ]
        per_task[res["task"]] = {
            # "includes 0 or lies above it" is the same as: the upper end is not below 0.
            "erase_minus_kmeans_ok": ek is not None and ek["high"] is not None and ek["high"] >= 0,
            "erase_minus_kmeans": ek,
            "methods_beating_zero": beats_zero,
            "at_chance": _at_chance(res),
        }
        if beats_zero:
            pooled_e += res["methods"]["erase"]["per_item"]["correct"]
            pooled_r += res["methods"]["random"]["per_item"]["correct"]
            means.append(res["paired"]["erase-random"]["mean"])
            if "routed" in res["methods"]:
                routed_a += res["methods"]["routed"]["per_item"]["correct"]
                routed_b += res["methods"]["erase"]["per_item"]["correct"]
                routed_means.append(res["paired"]["routed-erase"]["mean"])
    return {
        "routed_minus_erase_pooled": paired_difference(routed_a, routed_b) if routed_a else None,
        "routed_minus_erase_mean_of_tasks": sum(routed_means) / len(routed_means) if routed_means else None,
        "per_task": per_task,
        "tasks_beating_zero": [t for t, v in per_task.items() if v["methods_beating_zero"]],
        "erase_minus_random_pooled": paired_difference(pooled_e, pooled_r) if pooled_e else None,
        "erase_minus_random_mean_of_tasks": sum(means) / len(means) if means else None,
    }


def _at_chance(res: dict) -> list[str]:
    """Methods whose Wilson interval contains the chance level (MC tasks only)."""
    chance = res.get("chance")
    if chance is None:
        return []
    return [m for m, v in res["methods"].items() if v["ci95"][0] <= chance <= v["ci95"][1]]


def _write(args, results, started, model, done: bool) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "eval",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "model": Path(model).name,
        "embedder": "all-MiniLM-L6-v2",
        "limit": args.limit,
        "complete": done,
        "total_wall_s": time.time() - started,
        "note": args.note,
        "summary": summary(results),
        "tasks": results,
    }
    (args.out / "eval.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    (args.out / "eval.md").write_text(markdown(doc))


def _ci(v) -> str:
    return f"{v['accuracy']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"


def _diff(d) -> str:
    if d is None:
        return "–"
    if d["low"] is None:
        return f"{d['mean']:+.2f}"
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def markdown(doc: dict) -> str:
    out = [
        "# erase eval on BIG-bench tasks and the sample data",
        "",
        f"- command: `{doc['command']}`",
        f"- date (UTC): {doc['date_utc']}; machine: {doc['machine']['cpu']}, "
        f"{doc['machine']['cores']} cores; total wall time {doc['total_wall_s']:.0f} s"
        + ("" if doc["complete"] else " (**run incomplete: partial results**)"),
        f"- model: {doc['model']}; embedder: {doc['embedder']}; first {doc['limit']} test items "
        "per task (hash split 50/50, train = all remaining items)",
        "- accuracy: Wilson 95% interval; paired differences: mean of per-item d in {-1,0,1} "
        "± 1.96·sd/√n; latency: per query, scoring/generation only (knn includes its own "
        "prefix build); 'top share' = share of the most frequent predicted answer",
    ]
    if doc.get("note"):
        out.append(f"- note: {doc['note']}")
    out.append("")
    for res in doc["tasks"]:
        chance = res.get("chance")
        head = f"## {res['task']} ({res['kind']}, {res['n_test']} test / {res['n_train']} train"
        head += f", chance {chance:.2f})" if chance is not None else ")"
        out += [
            head,
            "",
            "| method | accuracy [95% CI] | mean-logprob acc | erase − method | routed − method | "
            "method − zero | top share | ms/query mean / median | prefix builds |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m, v in res["methods"].items():
            mean_acc = v.get("accuracy_mean_logprob")
            builds = v.get("prefix_builds")
            out.append(
                f"| {m} | {_ci(v)} | {'–' if mean_acc is None else f'{mean_acc:.2f}'} | "
                f"{_diff(res['paired'].get(f'erase-{m}')) if m not in ('erase', 'routed') else '–'} | "
                f"{_diff(res['paired'].get(f'routed-{m}')) if f'routed-{m}' in res['paired'] else '–'} | "
                f"{_diff(res['paired'].get(f'{m}-zero')) if m != 'zero' else '–'} | "
                f"{v['most_frequent_share']:.2f} | "
                f"{v['latency_ms_mean']:.0f} / {v['latency_ms_median']:.0f} | "
                f"{'–' if builds is None else builds} |"
            )
        if res.get("reused"):
            out.append(f"\n(reused from {res['reused']['from']}: {', '.join(res['reused']['methods'])})")
        out.append("")
    s = doc["summary"]
    out += ["## Summary against SPEC 7", ""]
    for task, v in s["per_task"].items():
        ek = v["erase_minus_kmeans"]
        verdict = (
            "includes 0"
            if ek and ek["low"] is not None and ek["low"] <= 0 <= ek["high"]
            else ("above 0" if ek and ek["low"] is not None and ek["low"] > 0 else "below 0")
        )
        chance_note = f"; interval contains chance: {', '.join(v['at_chance'])}" if v["at_chance"] else ""
        beats = ", ".join(v["methods_beating_zero"]) or "none"
        out.append(f"- {task}: erase − kmeans {_diff(ek)} ({verdict}); beats zero-shot: {beats}{chance_note}")
    pooled = s["erase_minus_random_pooled"]
    out += ["", f"Tasks where some method beats zero-shot: {', '.join(s['tasks_beating_zero']) or 'none'}."]
    if pooled:
        out.append(
            f"erase − random over those tasks (items pooled, paired): {_diff(pooled)} "
            f"(n = {pooled['n']}); unweighted mean of per-task means "
            f"{s['erase_minus_random_mean_of_tasks']:+.3f}."
        )
    routed = s.get("routed_minus_erase_pooled")
    if routed:
        out.append(
            f"routed − erase over those tasks (items pooled, paired): {_diff(routed)} (n = {routed['n']}); "
            f"unweighted mean of per-task means {s['routed_minus_erase_mean_of_tasks']:+.3f}."
        )
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
