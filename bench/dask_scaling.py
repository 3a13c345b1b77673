"""Issue 12's scaling run: `erase fit` at n = 1e6 in this process vs on a 2-worker Dask
LocalCluster (`--scheduler local:2`), and ingest's embedding throughput with 1 and 2 workers,
on this 2-core machine (shared with other jobs: the load average is recorded).

Fit: service.fit on the synthetic 384-d store of bench/synthstore.py (the one forget_e2e uses),
at erase's defaults (k 8, eps 0.05, dim 32, T 3, route size 8), locally, then with
scheduler="local:2", alternated over --repeat rounds (medians); each timed from the call to its
return (lock, reading and projecting the embeddings from zarr, every pass, manifest, commit; for
Dask also starting the cluster, which is timed on its own too). manifest.json and fit/state.npz
are compared byte for byte.

Ingest: the bundled all-MiniLM-L6-v2 on BIG-bench inputs, batch 64. (a) the embedding step alone,
warm (model loaded, cluster running, one warm-up call first): this process (torch on all cores)
vs distributed.embed_texts on LocalClusters of 1 and 2 workers (torch threads = cores / workers,
as `--scheduler local:N` sets them), alternated, medians of --repeat rounds; (b) `erase ingest`
end to end as a user runs it, a new process each: without Dask, `--scheduler local:1` and
`--scheduler local:2` (cluster start, worker model loads, writing the store included).

    python bench/dask_scaling.py [--n 1000000] [--texts 2000] [--repeat 2] [--skip-fit] [--skip-ingest]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import synthstore
from common import CACHE, VENV_BIN, log, machine, now_utc, write_results
from corpus import bigbench_inputs

FITTED = ("manifest.json", "fit/state.npz")


def bench_fit(n: int, repeat: int) -> tuple[dict, list[list]]:
    """`repeat` rounds of: a local fit, then a fit on a fresh 2-worker LocalCluster; medians."""
    from erase_cli import distributed, service

    src = synthstore.pristine(n)
    store = CACHE / "runs" / f"dask-fit-{n}"
    if store.exists():
        shutil.rmtree(store)
    shutil.copytree(src, store)
    out: dict = {"n": n, "local_s": [], "dask_s": [], "cluster_start_stop_s": [], "identical": [], "load": []}
    saved = None
    for rep in range(repeat):
        out["load"].append(machine()["loadavg_at_start"])
        t0 = time.perf_counter()
        local = service.fit(store)
        out["local_s"].append(time.perf_counter() - t0)
        saved = saved or {rel: (store / rel).read_bytes() for rel in FITTED}
        t0 = time.perf_counter()
        with distributed.connect("local:2"):
            pass
        out["cluster_start_stop_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dask = service.fit(store, scheduler="local:2")
        out["dask_s"].append(time.perf_counter() - t0)
        out["identical"].append(all((store / rel).read_bytes() == saved[rel] for rel in FITTED))
        log(f"round {rep}: local fit {out['local_s'][-1]:.1f} s, dask fit {out['dask_s'][-1]:.1f} s ({dask.dask})")
    out["tasks_by_worker"] = dask.dask["tasks_by_worker"] if dask.dask else None
    out["state_digest"] = local.state_digest
    out["params"] = {"k": local.k, "eps": local.eps, "dim": local.dim, "max_iter": local.max_iter}
    med = {k: float(np.median(out[k])) for k in ("local_s", "dask_s", "cluster_start_stop_s")}
    out["median"] = med
    shutil.rmtree(store)
    row = [
        n,
        "k 8, dim 32, T 3",
        round(med["local_s"], 1),
        round(med["dask_s"], 1),
        round(med["cluster_start_stop_s"], 1),
        round(med["local_s"] / med["dask_s"], 2),
        all(out["identical"]),
    ]
    return out, [row]


def _texts(count: int) -> list[str]:
    texts = [t for inputs in bigbench_inputs().values() for t in inputs]
    return texts[:: max(1, len(texts) // count)][:count]


def bench_embed(texts: list[str], repeat: int) -> dict:
    """Warm embedding throughput (texts/s): this process and 1- and 2-worker LocalClusters, all
    loaded first, then measured in turn, `repeat` rounds (the machine's load varies: alternating
    spreads it over the three); medians."""
    from erase_cli import distributed
    from erase_cli.embed import load_embedder

    def nocheck(dim: int, name: str) -> None:
        pass

    model = load_embedder(None, "cpu")
    list(model.embed(texts[:128], 64))  # warm-up
    local = np.concatenate(list(model.embed(texts, 64)))
    samples: dict[str, list[float]] = {"in_process": [], "workers_1": [], "workers_2": []}
    out: dict = {}
    with distributed.connect("local:1") as one, distributed.connect("local:2") as two:
        clusters = {"workers_1": one, "workers_2": two}
        for cluster in clusters.values():
            distributed.embed_texts(cluster, texts[:256], None, "cpu", 64, nocheck)  # model load, warm-up
        for rep in range(repeat):
            t0 = time.perf_counter()
            list(model.embed(texts, 64))
            samples["in_process"].append(len(texts) / (time.perf_counter() - t0))
            for label, cluster in clusters.items():
                t0 = time.perf_counter()
                vectors, _ = distributed.embed_texts(cluster, texts, None, "cpu", 64, nocheck)
                samples[label].append(len(texts) / (time.perf_counter() - t0))
                # Parts are batched differently from one process's batches, so a vector's last
                # bits may differ (the embedder's nondeterminism, outside the contract).
                out[f"{label}_max_abs_diff"] = float(np.abs(vectors - local).max())
            log(f"round {rep}: " + ", ".join(f"{k} {v[-1]:.0f} texts/s" for k, v in samples.items()))
    out["samples"] = samples
    out.update({k: float(np.median(v)) for k, v in samples.items()})
    return out


def bench_ingest_cli(texts: list[str]) -> dict:
    out = {}
    tmp = Path(tempfile.mkdtemp(prefix="erase-bench-dask-"))
    try:
        data = tmp / "texts.jsonl"
        data.write_bytes(
            b"".join(orjson.dumps({"id": i, "input": t, "target": "x"}) + b"\n" for i, t in enumerate(texts))
        )
        for label, extra in (
            ("no_dask", []),
            ("local_1", ["--scheduler", "local:1"]),
            ("local_2", ["--scheduler", "local:2"]),
        ):
            store = tmp / label
            t0 = time.perf_counter()
            r = subprocess.run(
                [
                    str(VENV_BIN / "erase"),
                    "ingest",
                    str(data),
                    "--store",
                    str(store),
                    "--device",
                    "cpu",
                    "--json",
                    *extra,
                ],
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(r.stderr)
            out[label] = {"wall_s": wall, "texts_per_s": len(texts) / wall, "report": json.loads(r.stdout)}
            log(f"erase ingest {label}: {wall:.1f} s")
            shutil.rmtree(store)
    finally:
        shutil.rmtree(tmp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-fit", action="store_true")
    ap.add_argument("--skip-ingest", action="store_true")
    args = ap.parse_args()
    started = now_utc()
    results: dict = {}
    table: list[list] = []
    if not args.skip_fit:
        results["fit"], rows = bench_fit(args.n, args.repeat)
        table += [["fit", *r] for r in rows]
    if not args.skip_ingest:
        texts = _texts(args.texts)
        results["embed_warm"] = bench_embed(texts, args.repeat)
        results["ingest_cli"] = bench_ingest_cli(texts)
        e, c = results["embed_warm"], results["ingest_cli"]
        table.append(
            [
                "embed (warm), texts/s",
                len(texts),
                "MiniLM, batch 64",
                round(e["in_process"]),
                f"1 worker {e['workers_1']:.0f}, 2 workers {e['workers_2']:.0f}",
                "–",
                round(e["workers_2"] / e["workers_1"], 2),
                "–",
            ]
        )
        table.append(
            [
                "erase ingest (new process), s",
                len(texts),
                "MiniLM, batch 64",
                round(c["no_dask"]["wall_s"], 1),
                f"local:1 {c['local_1']['wall_s']:.1f}, local:2 {c['local_2']['wall_s']:.1f}",
                "–",
                round(c["local_1"]["wall_s"] / c["local_2"]["wall_s"], 2),
                "–",
            ]
        )
    write_results(
        "dask_scaling",
        summary="Fit at n = 1e6 in process vs on a 2-worker Dask LocalCluster, and ingest with 1 and 2 workers, "
        "on a 2-core machine: two workers share the same two cores, so there is little to gain here; the run "
        "shows the overhead and that the distributed fit is byte-identical.",
        timed_region="fit: service.fit from call to return (Dask: cluster start included, also timed alone), "
        "alternated, medians; "
        "embed (warm): the embedding step alone, model loaded, cluster running; erase ingest: the whole command "
        "in a new process (imports, cluster start, model loads, store writes)",
        results=results,
        header=["what", "n", "setting", "no Dask", "Dask", "cluster start+stop s", "speed-up", "byte-identical"],
        table=table,
        notes=[
            "Speed-up for fit: no-Dask time / Dask time; for embed and ingest: 1 worker / 2 workers.",
            "This machine has 2 cores shared with other engineers' jobs (load average in the JSON): a second "
            "worker process competes for the same cores as the first, so a speed-up needs more machines or cores.",
        ],
        started=started,
    )


if __name__ == "__main__":
    main()
