"""`erase eval` (SPEC 3b): accuracy of ERASE's selection against the baselines on one task.

Everything happens in memory: no store is opened or written (ERASE_STORE is ignored), and the
prefix KV state is never saved, so nothing of the task outlives the run.

Split. Every example gets an id (BIG-bench: its index in the file, as a string). It is a test item
when the first byte of sha256(task name, NUL, id) is odd, a train item otherwise: about 50/50,
fixed per task, independent of `--seed`. `--limit N` keeps the first N test items in id order
(BIG-bench: file order; JSONL: the ids' UTF-8 byte order); the train set is never truncated.

Statistics.
- Accuracy: Wilson score interval, 95%.
- Paired difference A - B over the same items: d_i = correct_A(i) - correct_B(i) in {-1, 0, 1},
  mean(d) +- 1.96 * sd(d) / sqrt(n), sd with n - 1 (a paired Wald interval). With n < 2 there
  is no interval; when every d_i is equal it collapses to a point.
- Multiple choice: the prediction is the choice with the highest total log-probability after the
  prompt (BIG-bench multiple_choice_grade); the per-token-mean variant is reported beside it.
  Chance = mean over test items of 1 / number of choices.
- Generative: greedy generation stopping at the demonstration separator; exact match after
  stripping whitespace against any acceptable target.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from erase_cli import config
from erase_cli.baselines import kmeans_float, knn_examples, random_examples
from erase_cli.errors import InvalidInput, InvalidParameter, NotFound
from erase_cli.prompt import PromptFormat, prefix_text, query_text

METHODS = ("erase", "routed", "kmeans", "random", "zero", "knn")
_NEEDS_EMBEDDINGS = ("erase", "routed", "kmeans", "knn")
Z95 = 1.959963984540054
DEFAULT_MAX_TOKENS = 32
EMBED_BATCH = 64

Progress = Callable[[str, int, int], None]
"""progress(label, done, total): called as each stage advances (a rich bar is one consumer)."""


@dataclass(frozen=True)
class Item:
    """One example. `targets` are the acceptable answers (demonstrations show the first);
    `choices` is set for multiple choice, where `targets` are the correct choices."""

    id: str
    input: str
    targets: tuple[str, ...]
    choices: tuple[str, ...] | None = None

    def as_example(self) -> dict:
        example = {"id": self.id, "input": self.input, "target": self.targets[0]}
        if self.choices is not None:
            example["choices"] = list(self.choices)
        return example


@dataclass(frozen=True)
class Task:
    name: str
    fmt: PromptFormat
    train: list[Item]
    test: list[Item]
    source: str

    @property
    def kind(self) -> str:
        if all(item.choices for item in self.test):
            return "multiple_choice"
        if not any(item.choices for item in self.test):
            return "generative"
        return "mixed"


# ---------------------------------------------------------------------------------------- loading


def is_test(task_name: str, item_id: str) -> bool:
    """The fixed 50/50 split: odd first byte of sha256(task name, NUL, id) means test."""
    digest = hashlib.sha256(task_name.encode("utf-8") + b"\x00" + item_id.encode("utf-8"))
    return bool(digest.digest()[0] & 1)


def load_task(path: str | Path | Sequence[str | Path], limit: int | None = None) -> Task:
    """Read a task: a BIG-bench task.json (or a directory holding one), a directory with
    train.jsonl and test.jsonl, a (train, test) pair of JSONL files, or one JSONL file that is
    split by the hash rule. Raises NotFound / InvalidInput naming the path and the fix."""
    if limit is not None and limit < 1:
        raise InvalidParameter(f"--limit must be at least 1, got {limit}")
    if isinstance(path, (list, tuple)):
        if len(path) != 2:
            raise InvalidParameter("give a task as one path or a (train, test) pair of JSONL files")
        train_path, test_path = (Path(p) for p in path)
        name = train_path.parent.name or train_path.stem
        task = _jsonl_pair(name, train_path, test_path)
    else:
        p = Path(path)
        if not p.exists():
            raise NotFound(
                f"task {str(p)!r} does not exist; pass a BIG-bench task.json, a directory with "
                "train.jsonl and test.jsonl, or a JSONL file"
            )
        if p.is_dir():
            if (p / "task.json").is_file():
                task = _bigbench(p / "task.json", default_name=p.name)
            elif (p / "train.jsonl").is_file() and (p / "test.jsonl").is_file():
                task = _jsonl_pair(p.name, p / "train.jsonl", p / "test.jsonl")
            else:
                raise InvalidInput(
                    f"directory {str(p)!r} has neither task.json nor train.jsonl + test.jsonl; "
                    "point eval at one of those"
                )
        elif p.suffix == ".json":
            task = _bigbench(p, default_name=p.parent.name or p.stem)
        else:
            task = _jsonl_split(p)
    if not task.train:
        raise InvalidInput(f"task {task.source!r} has no training examples after the split")
    if not task.test:
        raise InvalidInput(f"task {task.source!r} has no test examples after the split")
    if limit is not None:
        task = Task(task.name, task.fmt, task.train, task.test[:limit], task.source)
    return task


def _bigbench(path: Path, default_name: str) -> Task:
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not valid JSON ({exc}); pass a BIG-bench task.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise InvalidInput(f"{path}: no 'examples' list; pass a BIG-bench task.json")
    name = data.get("name") if isinstance(data.get("name"), str) else default_name
    items = [_bigbench_item(path, i, ex) for i, ex in enumerate(data["examples"])]
    train = [it for it in items if not is_test(name, it.id)]
    test = [it for it in items if is_test(name, it.id)]  # file order = numeric id order
    return Task(name, PromptFormat.from_bigbench(data), train, test, str(path))


def _bigbench_item(path: Path, index: int, ex: object) -> Item:
    where = f"{path}: example {index}"
    if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
        raise InvalidInput(f"{where} has no string 'input'; each example needs one")
    scores = ex.get("target_scores")
    if isinstance(scores, dict) and scores:
        try:
            values = {str(choice): float(score) for choice, score in scores.items()}
        except (TypeError, ValueError):
            raise InvalidInput(f"{where}: target_scores must map choices to numbers") from None
        best = max(values.values())
        if best <= 0:
            raise InvalidInput(f"{where}: no choice in target_scores has a positive score")
        correct = tuple(c for c, s in values.items() if s == best)
        return Item(str(index), ex["input"], correct, tuple(values))
    target = ex.get("target")
    if isinstance(target, str):
        targets = (target,)
    elif isinstance(target, list) and target and all(isinstance(t, str) for t in target):
        targets = tuple(target)
    else:
        raise InvalidInput(f"{where} has neither target_scores nor a string/list 'target'")
    return Item(str(index), ex["input"], targets)


def _items_from_jsonl(path: Path) -> list[Item]:
    from erase_cli.records import read_jsonl

    records, _ = read_jsonl(path)
    items = []
    for r in records:
        targets = (r.target,) if isinstance(r.target, str) else tuple(r.target)
        choices = tuple(r.choices) if r.choices else None
        if choices is not None and not set(targets) & set(choices):
            raise InvalidInput(
                f"{path}: record {r.id!r} has choices but its target is not one of them; "
                "make the target one of the choices"
            )
        items.append(Item(r.id, r.input, targets, choices))
    return items


def _by_id(items: Iterable[Item]) -> list[Item]:
    return sorted(items, key=lambda it: it.id.encode("utf-8"))


def _jsonl_pair(name: str, train_path: Path, test_path: Path) -> Task:
    for p in (train_path, test_path):
        if not p.is_file():
            raise NotFound(f"task file {str(p)!r} does not exist")
    train, test = _items_from_jsonl(train_path), _items_from_jsonl(test_path)
    return Task(name, PromptFormat(), _by_id(train), _by_id(test), f"{train_path},{test_path}")


def _jsonl_split(path: Path) -> Task:
    name = path.stem
    items = _items_from_jsonl(path)
    train = [it for it in items if not is_test(name, it.id)]
    test = [it for it in items if is_test(name, it.id)]
    return Task(name, PromptFormat(), _by_id(train), _by_id(test), str(path))


# ------------------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion; None when n == 0."""
    if n == 0:
        return None
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a: Sequence[bool], b: Sequence[bool], z: float = Z95) -> dict:
    """Mean of d_i = a_i - b_i with a paired Wald interval (see the module docstring)."""
    if len(a) != len(b):
        raise ValueError("paired difference needs the same items for both methods")
    n = len(a)
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(d.mean()) if n else None
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n}
    half = z * float(d.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def most_frequent_share(predictions: Sequence[str]) -> tuple[str | None, float | None]:
    """The most frequent prediction (ties: the first seen) and its share of all predictions."""
    if not predictions:
        return None, None
    answer, count = Counter(predictions).most_common(1)[0]
    return answer, count / len(predictions)


def chance_level(items: Sequence[Item]) -> float | None:
    """Expected accuracy of a uniform random choice: mean of |correct| / |choices| (usually 1/|choices|)."""
    mc = [it for it in items if it.choices]
    if not mc:
        return None
    return sum(len(set(it.targets)) / len(it.choices) for it in mc) / len(mc)


# ------------------------------------------------------------------------------------- selection


def erase_state(train_x: np.ndarray, ids: Sequence[str], k: int, seed: int, route_size: int | None = None):
    """The quantized fit of the train items with the default eps/dim/T: (state, projector)."""
    from erase_cli import qkmeans

    d_in = train_x.shape[1]
    dim = _working_dim(d_in)
    params = qkmeans.Params(
        k=k,
        eps=config.DEFAULT_EPS,
        dim=dim,
        seed=seed,
        max_iter=config.DEFAULT_MAX_ITER,
        route_size=route_size,
    )
    projector = qkmeans.Projector(d_in, dim, seed)
    fixed = projector(qkmeans.to_fixed(np.asarray(train_x, dtype=np.float32)))
    return qkmeans.fit(qkmeans.ArraySource(list(ids), fixed), params, d_in), projector


def erase_examples(train_x: np.ndarray, ids: Sequence[str], k: int, seed: int) -> list[str]:
    """The ids the quantized fit selects, in prompt (cluster) order, with the default eps/dim/T."""
    state, _ = erase_state(train_x, ids, k, seed)
    return [example_id for _, example_id in state.examples]


def routed_prompts(
    train_x: np.ndarray, ids: Sequence[str], test_x: np.ndarray, k: int, seed: int, route_size: int
) -> list[tuple[int | None, list[str]]]:
    """(route, demonstration ids in prompt order) for each test vector: the rule `erase ask
    --mode routed` applies (routing.route_vectors), on a fit with routes of `route_size`."""
    from erase_cli.routing import route_vectors

    state, projector = erase_state(train_x, ids, k, seed, route_size)
    routes = dict(state.routes)
    chosen = route_vectors(state.centroids[-1], list(routes), projector, test_x) if len(test_x) else []
    return [(j, [] if j is None else list(reversed(routes[j]))) for j in chosen]


def _working_dim(d_in: int) -> int | None:
    """The default projection, dropped when it would not reduce (a small test embedder)."""
    dim = config.DEFAULT_DIM
    return dim if dim and dim < d_in else None


def _embed_all(embedder, texts: list[str], progress: Progress | None) -> np.ndarray:
    batches = []
    done = 0
    for batch in embedder.embed(texts, EMBED_BATCH):
        batch = np.asarray(batch, dtype=np.float32)
        batches.append(batch)
        done += batch.shape[0]
        if progress:
            progress("embedding", done, len(texts))
    return np.concatenate(batches) if batches else np.zeros((0, 0), np.float32)


# ------------------------------------------------------------------------------------------- eval


def run_eval(
    task_path: str | Path | Sequence[str | Path],
    methods: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int | None = None,
    k: int | None = None,
    model_path: str | None = None,
    embedder_name: str | None = None,
    progress: Progress | None = None,
    *,
    generator=None,
    embedder=None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    route_size: int | None = None,
    device: str | None = None,
) -> dict:
    """Evaluate each method on the task's test items; returns a JSON-ready dict. `device`: where
    the embedder runs (auto, cpu or cuda).

    erase uses the config defaults (eps, dim, max_iter) with this k and seed; kmeans is Auto-CoT's
    selection, scikit-learn KMeans with the same k, max_iter and seed (as random_state) on the
    unprojected float embeddings. The two differ by quantization, projection and the seeding
    draw (sklearn's greedy k-means++ from a seeded stream, erase's hash race).

    `generator` / `embedder` replace the real models (tests pass the fakes). One model load and
    one embedding pass serve every method; a shared-prefix method sets its prefix once.
    """
    methods = _check_methods(methods)
    seed = config.DEFAULT_SEED if seed is None else seed
    k = config.DEFAULT_K if k is None else k
    route_size = config.DEFAULT_ROUTE_SIZE if route_size is None else route_size
    if k < 1:
        raise InvalidParameter(f"-k must be at least 1, got {k}")
    if route_size < 1:
        raise InvalidParameter(f"--route-size must be at least 1, got {route_size}")
    if max_tokens < 1:
        raise InvalidParameter(f"--max-tokens must be at least 1, got {max_tokens}")
    task = load_task(task_path, limit)
    train_ids = [it.id for it in task.train]
    by_id = {it.id: it for it in task.train}

    train_x = test_x = None
    if any(m in _NEEDS_EMBEDDINGS for m in methods):
        if embedder is None:
            from erase_cli.embed import load_embedder

            embedder = load_embedder(embedder_name, device)
        x = _embed_all(embedder, [it.input for it in task.train + task.test], progress)
        train_x, test_x = x[: len(task.train)], x[len(task.train) :]

    model_name = None
    if generator is None:
        from erase_cli.llm import LlamaGenerator, resolve_model

        model_name = str(resolve_model(model_path))
        generator = LlamaGenerator(model_name, n_threads=n_threads, n_gpu_layers=n_gpu_layers)

    results = {}
    for method in methods:
        if method == "knn":

            def prompt_for(index, _x=test_x):
                return None, [by_id[i] for i in knn_examples(train_x, train_ids, _x[index], k)]

            results[method] = _score_method(task, generator, prompt_for, max_tokens, progress, method)
            continue
        if method == "routed":
            routed = routed_prompts(train_x, train_ids, test_x, k, seed, route_size)
            results[method] = _score_method(
                task,
                generator,
                lambda index, _r=routed: (("route", _r[index][0]), [by_id[i] for i in _r[index][1]]),
                max_tokens,
                progress,
                method,
            )
            results[method]["routes"] = [j for j, _ in routed]
            continue
        if method == "erase":
            chosen = erase_examples(train_x, train_ids, k, seed)
        elif method == "kmeans":
            chosen = [i for _, i in kmeans_float(train_x, train_ids, k, seed, config.DEFAULT_MAX_ITER)]
        elif method == "random":
            chosen = random_examples(train_ids, k, seed)
        else:
            chosen = []
        shared = [by_id[i] for i in chosen]
        results[method] = _score_method(
            task, generator, lambda index, _s=shared: (("shared",), _s), max_tokens, progress, method
        )
        results[method]["examples"] = chosen

    return _summarise(task, methods, results, seed, k, route_size, model_name, embedder)


def _check_methods(methods: Sequence[str] | None) -> list[str]:
    if not methods:
        return list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InvalidParameter(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def _score_method(task, generator, prompt_for, max_tokens, progress, method) -> dict:
    """Run one method over the test items. `prompt_for(i)` gives (key, demonstrations) of item
    i. Items are answered grouped by key (first appearance order), so a prompt that several items
    share (the global prompt; a route) is built once and its build time goes to `prefix_ms`, as a
    cached prefix would be. A key of None is the item's own prompt (knn): its build is part of
    that query's latency, since nothing can be cached across queries."""
    fmt = task.fmt
    stop = [fmt.separator] if fmt.separator else []
    total = len(task.test)
    prompts = [prompt_for(index) for index in range(total)]
    groups: dict = {}
    for index, (key, _) in enumerate(prompts):
        groups.setdefault(("item", index) if key is None else key, []).append(index)
    preds, preds_mean = [""] * total, [""] * total
    correct, correct_mean, latency = [False] * total, [False] * total, [0.0] * total
    prefix_ms, builds, done = 0.0, 0, 0
    for key, indices in groups.items():
        own = key[0] == "item"
        started = time.perf_counter()
        generator.set_prefix(prefix_text(fmt, [it.as_example() for it in prompts[indices[0]][1]]))
        builds += 1
        build_ms = (time.perf_counter() - started) * 1000.0
        if not own:
            prefix_ms += build_ms
        for index in indices:
            item = task.test[index]
            started = time.perf_counter()
            query = query_text(fmt, item.input, list(item.choices) if item.choices else None)
            if item.choices:
                scored = generator.score(query, list(item.choices))
                by_total, by_mean = _argmax_choices(item.choices, scored)
            else:
                text, _ = generator.generate(query, max_tokens, stop)
                by_total = by_mean = text.strip()
            latency[index] = (time.perf_counter() - started) * 1000.0 + (build_ms if own else 0.0)
            accepted = {t.strip() for t in item.targets}
            preds[index], preds_mean[index] = by_total, by_mean
            correct[index] = by_total.strip() in accepted
            correct_mean[index] = by_mean.strip() in accepted
            done += 1
            if progress:
                progress(method, done, total)
    return {
        "predictions": preds,
        "predictions_mean": preds_mean,
        "correct": correct,
        "correct_mean": correct_mean,
        "latency_ms": latency,
        "prefix_ms": None if all(key[0] == "item" for key in groups) else prefix_ms,  # knn: in latency
        "prefix_builds": builds,
    }


def _argmax_choices(choices: Sequence[str], scored) -> tuple[str, str]:
    """Best choice by total and by per-token mean log-prob; ties go to the earlier choice."""
    totals = {text: (total, mean) for text, total, mean in scored}
    best_total = max(choices, key=lambda c: (totals[c][0], -choices.index(c)))
    best_mean = max(choices, key=lambda c: (totals[c][1], -choices.index(c)))
    return best_total, best_mean


def _summarise(task, methods, results, seed, k, route_size, model_name, embedder) -> dict:
    n = len(task.test)
    out_methods = {}
    for method in methods:
        r = results[method]
        hits = sum(r["correct"])
        ci = wilson_interval(hits, n)
        top, share = most_frequent_share(r["predictions"])
        entry = {
            "accuracy": hits / n,
            "ci95": list(ci) if ci else None,
            "correct": hits,
            "n": n,
            "most_frequent_answer": top,
            "most_frequent_share": share,
            "latency_ms_mean": statistics.fmean(r["latency_ms"]),
            "latency_ms_median": statistics.median(r["latency_ms"]),
            "prefix_ms": r["prefix_ms"],
            "prefix_builds": r["prefix_builds"],
            "per_item": {
                "prediction": r["predictions"],
                "correct": r["correct"],
                "latency_ms": r["latency_ms"],
            },
        }
        if task.kind != "generative":
            mean_hits = sum(r["correct_mean"])
            mean_ci = wilson_interval(mean_hits, n)
            entry["accuracy_mean_logprob"] = mean_hits / n
            entry["ci95_mean_logprob"] = list(mean_ci) if mean_ci else None
        if "examples" in r:
            entry["examples"] = r["examples"]
        if "routes" in r:
            entry["per_item"]["route"] = r["routes"]
        out_methods[method] = entry

    # erase against every baseline (SPEC: erase - kmeans, erase - random), routed against erase
    # and knn (what routing buys, and what it leaves to per-query prompts), and every method
    # against zero-shot, which says whether demonstrations help at all.
    pairs = [("routed", m) for m in ("erase", "knn") if m in methods]
    pairs += [("erase", m) for m in methods if m not in ("erase", "routed")]
    pairs += [(m, "zero") for m in methods if m != "zero"]
    pairs = list(dict.fromkeys(pairs))
    paired = {
        f"{a}-{b}": paired_difference(results[a]["correct"], results[b]["correct"])
        for a, b in pairs
        if a in results and b in results
    }
    return {
        "task": task.name,
        "source": task.source,
        "kind": task.kind,
        "n_train": len(task.train),
        "n_test": n,
        "test_ids": [it.id for it in task.test],
        "chance": chance_level(task.test),
        "k": k,
        "seed": seed,
        "params": {
            "eps": config.DEFAULT_EPS,
            "dim": config.DEFAULT_DIM,
            "max_iter": config.DEFAULT_MAX_ITER,
            "route_size": route_size,
        },
        "model": model_name,
        "embedder": getattr(embedder, "name", None),
        "methods": out_methods,
        "paired": paired,
        "interval": "Wilson 95% for accuracy; paired Wald 95% (mean d +- 1.96 sd/sqrt(n)) for differences",
    }


# ------------------------------------------------------------------------------------------ table


def render_table(result: Mapping):
    """A rich Table of one eval result (rendering only; run_eval computes everything)."""
    from rich.table import Table

    chance = result.get("chance")
    caption = f"{result['n_test']} test / {result['n_train']} train items, k={result['k']}, seed={result['seed']}"
    if chance is not None:
        caption += f", chance {chance:.2f}"
    table = Table(title=f"erase eval: {result['task']} ({result['kind']})", caption=caption)
    table.add_column("method")
    table.add_column("accuracy [95% CI]", justify="right")
    if result["kind"] != "generative":
        table.add_column("mean-logprob acc", justify="right")
    table.add_column("erase − method [95% CI]", justify="right")
    routed = "routed" in result["methods"]
    if routed:
        table.add_column("routed − method [95% CI]", justify="right")
    table.add_column("top answer share", justify="right")
    table.add_column("ms/query mean / median", justify="right")
    for method, m in result["methods"].items():
        ci = m["ci95"]
        row = [method, f"{m['accuracy']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"]
        if result["kind"] != "generative":
            row.append(f"{m['accuracy_mean_logprob']:.3f}")
        diff = result["paired"].get(f"erase-{method}")
        row.append(_fmt_diff(diff) if diff else "")
        if routed:
            diff = result["paired"].get(f"routed-{method}")
            row.append(_fmt_diff(diff) if diff else "")
        share = m["most_frequent_share"]
        row.append(f"{share:.2f}" if share is not None else "")
        row.append(f"{m['latency_ms_mean']:.0f} / {m['latency_ms_median']:.0f}")
        table.add_row(*row)
    return table


def _fmt_diff(diff: Mapping) -> str:
    if diff["low"] is None:
        return f"{diff['mean']:+.3f}"
    return f"{diff['mean']:+.3f} [{diff['low']:+.2f}, {diff['high']:+.2f}]"
