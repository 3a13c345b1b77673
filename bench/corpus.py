"""Realistic text for the crossing curves: the shared BIG-bench inputs, then text the project
generates from them, embedded once with the bundled MiniLM and cached under bench/.cache/.

Generated text = recombined BIG-bench fragments: for a task chosen in proportion to its size, the
first part of one input (cut at a random word) joined to the last part of another input of the
same task. It keeps each task's vocabulary, length and style (so the embeddings cluster like real
task data) without copying any input whole. Seeded, so the corpus is the same on every run.

    python bench/corpus.py [--n 100000]     # embeds and caches; later runs load the cache
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from common import CACHE, log

BIGBENCH = Path("/work/shared/bigbench")


def bigbench_inputs() -> dict[str, list[str]]:
    out = {}
    for path in sorted(BIGBENCH.glob("*/task.json")):
        task = json.loads(path.read_text())
        seen, inputs = set(), []
        for ex in task["examples"]:
            text = ex["input"].strip()
            if text and text not in seen:
                seen.add(text)
                inputs.append(text)
        out[path.parent.name] = inputs
    return out


def corpus(n: int, seed: int = 0) -> tuple[list[str], int]:
    """(texts, n_bigbench): every BIG-bench input first, then generated text up to n texts."""
    tasks = bigbench_inputs()
    texts = [t for inputs in tasks.values() for t in inputs]
    seen = set(texts)
    n_bb = len(texts)
    names = list(tasks)
    sizes = np.array([len(tasks[t]) for t in names], dtype=float)
    rng = np.random.default_rng(seed)
    words = {t: [s.split() for s in tasks[t]] for t in names}
    while len(texts) < n:
        t = names[rng.choice(len(names), p=sizes / sizes.sum())]
        a, b = rng.integers(0, len(words[t]), 2)
        wa, wb = words[t][a], words[t][b]
        cut_a = int(rng.integers(1, len(wa) + 1))
        cut_b = int(rng.integers(0, len(wb)))
        text = " ".join(wa[:cut_a] + wb[cut_b:])
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts[:n], n_bb


PART = 8192  # texts per checkpoint file, so an interrupted embedding run resumes


def embeddings(n: int, seed: int = 0, batch_size: int = 64, total: int = 100_000) -> tuple[np.ndarray, list[str], int]:
    """(float32 (n, 384) L2-normalised MiniLM embeddings, texts, n_bigbench) of the first n texts
    of the `total`-text corpus, cached on disk in parts of PART texts, so a later call embeds only
    what is missing (and an interrupted run resumes)."""
    texts, n_bb = corpus(total, seed)
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    folder = CACHE / f"minilm-{seed}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    model, parts = None, []
    t0, done = time.perf_counter(), 0
    for lo in range(0, n, PART):
        hi = min(lo + PART, total)
        path = folder / f"{lo:07d}-{hi:07d}.npy"
        if not path.exists():
            if model is None:
                from erase_cli.embed import load_embedder

                model = load_embedder(None)
            x = np.concatenate(list(model.embed(texts[lo:hi], batch_size)))
            np.save(folder / "part.tmp.npy", x)
            (folder / "part.tmp.npy").rename(path)
            done += hi - lo
            log(f"embedded {hi}/{n} ({done / (time.perf_counter() - t0):.0f} texts/s)")
        parts.append(np.load(path))
    return np.concatenate(parts)[:n], texts[:n], n_bb


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    texts, n_bb = corpus(args.n)
    log(f"{len(texts)} texts ({n_bb} BIG-bench inputs); samples of generated text:")
    for t in texts[n_bb : n_bb + 5]:
        print("  ", t)
    x, _, _ = embeddings(args.n)
    log(f"embeddings {x.shape} cached")
