"""SPEC §7 "forget, certificate path, in process": certificate + in-memory state update for
deletions that do not cross, at n = 1e4, 1e5, 1e6 (d = 384, k = 16, T = 10, eps = 0.1).

Data: synthetic unit-norm clustered vectors (bench/common.clustered_unit). Non-crossing ids are
sampled with qkmeans.certify (what `erase forget --dry-run` runs). Each deletion is applied to the
same fitted state (independent single deletions; forget never mutates its input).

Timed region: one `qkmeans.forget(state, [id], x, survivors)` call — the certificate over all T
iterations plus the new State (subtracted sums and counts, final counts, candidate lists, example
replacement). Excluded: reading the vector from disk, the store I/O, and the one-off derived-array
cache of the loaded state (warmed once). `certify` alone is timed too. Reference: a fit from
scratch at the same n (`qkmeans.fit` on an in-memory ArraySource), the cost a refit-only system
pays per deletion.

    python bench/forget_certificate.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import WithoutSource, clustered_unit, log, median_ms, now_utc, rid, write_results

from erase_cli import qkmeans as qk

D, K, T, EPS, SEED = 384, 16, 10, 0.1, 0


def build(n: int) -> qk.ArraySource:
    x = np.empty((n, D), dtype=np.int64)
    lo = 0
    for chunk in clustered_unit(n, D, seed=SEED):
        x[lo : lo + len(chunk)] = qk.to_fixed(chunk)
        lo += len(chunk)
    return qk.ArraySource([rid(i) for i in range(n)], x)


def run(n: int, n_ids: int) -> dict:
    log(f"n={n}: generating")
    src = build(n)
    params = qk.Params(k=K, eps=EPS, dim=None, seed=SEED, max_iter=T)
    log(f"n={n}: fitting")
    t0 = time.perf_counter()
    state = qk.fit(src, params, D)
    fit_s = time.perf_counter() - t0
    log(f"n={n}: fit {fit_s:.1f} s")
    state._cache()
    rng = np.random.default_rng([SEED, n])
    order = rng.permutation(n)
    chosen, tried = [], 0
    for row in order[: min(n, 50 * n_ids)]:
        tried += 1
        if qk.certify(state, [src.ids[row]], src.x[row : row + 1]).action_needed == "none":
            chosen.append(int(row))
            if len(chosen) == n_ids:
                break
    cert_s, forget_s, replaced = [], [], 0
    examples = {i for _, i in state.examples}
    for row in chosen:
        ids, x = [src.ids[row]], src.x[row : row + 1]
        survivors = WithoutSource(src, [row])
        t0 = time.perf_counter()
        cert = qk.certify(state, ids, x)
        t1 = time.perf_counter()
        new, cert2 = qk.forget(state, ids, x, survivors)
        t2 = time.perf_counter()
        assert cert.action_needed == "none" and cert2.action_needed == "none" and new.n == n - 1
        replaced += ids[0] in examples
        cert_s.append(t1 - t0)
        forget_s.append(t2 - t1)
    return {
        "n": n,
        "fit_s": fit_s,
        "k_eff": state.k_eff,
        "ids_tried": tried,
        "ids_timed": len(chosen),
        "single_crossing_share_of_tried": 1 - len(chosen) / tried,
        "examples_replaced": replaced,
        "forget_median_ms": median_ms(forget_s),
        "forget_p90_ms": float(np.percentile(forget_s, 90) * 1000),
        "certify_median_ms": median_ms(cert_s),
        "refit_over_forget": fit_s / np.median(forget_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 1e4 and 1e5 only, fewer ids")
    args = ap.parse_args()
    started = now_utc()
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    n_ids = 50 if args.quick else 200
    rows = [run(n, n_ids) for n in sizes]
    base = rows[0]["forget_median_ms"]
    for r in rows:
        r["vs_n1e4"] = r["forget_median_ms"] / base
    big = rows[-1]
    met = {
        "median_le_1ms": all(r["forget_median_ms"] <= 1.0 for r in rows),
        "largest_within_1.5x_of_1e4": big["vs_n1e4"] <= 1.5,
        "refit_over_forget_ge_1000_at_largest": bool(big["refit_over_forget"] >= 1000),
    }
    write_results(
        "forget_certificate",
        summary=(
            f"Certificate + in-memory state update for non-crossing single deletions (d = {D}, k = {K}, "
            f"T = {T}, eps = {EPS}). Targets: median <= 1 ms, n = 1e6 within 1.5x of n = 1e4, "
            f"refit / forget >= 1000x at n = 1e6. Met: {met}."
        ),
        timed_region=(
            "one qkmeans.forget(state, [id], x, survivors) call on a non-crossing id (certificate "
            "over T iterations + new State); reference = qkmeans.fit from scratch at the same n, "
            "in memory"
        ),
        results={"params": {"d": D, "k": K, "max_iter": T, "eps": EPS, "seed": SEED}, "rows": rows, "met": met},
        header=[
            "n",
            "forget median ms",
            "p90 ms",
            "certify median ms",
            "vs n=1e4",
            "fit s",
            "refit / forget",
            "ids timed",
            "crossing share of tried",
        ],
        table=[
            [
                r["n"],
                r["forget_median_ms"],
                r["forget_p90_ms"],
                r["certify_median_ms"],
                r["vs_n1e4"],
                r["fit_s"],
                r["refit_over_forget"],
                r["ids_timed"],
                r["single_crossing_share_of_tried"],
            ]
            for r in rows
        ],
        notes=[
            "Independent single deletions from one fitted state (forget does not mutate its input).",
            "Non-crossing ids chosen by qkmeans.certify over a random permutation of the records.",
            "Synthetic data: 64 random unit directions plus Gaussian noise of norm ~0.6, renormalised.",
        ],
        started=started,
    )


if __name__ == "__main__":
    main()
