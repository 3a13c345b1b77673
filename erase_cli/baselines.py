"""Example-selection baselines for `erase eval` (SPEC 3b).

The quantized, exactly unlearnable selection lives in qkmeans.py. These are the references it is
compared against: unquantized k-means (Auto-CoT / ACoT), a hash-ranked random choice and per-query
nearest neighbours (KATE). Pure numpy functions; every tie is broken by the id's UTF-8 bytes so a
result does not depend on row order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from erase_cli.errors import InvalidParameter


def _canonical_order(ids: Sequence[str]) -> np.ndarray:
    """Row permutation that sorts ids by their UTF-8 bytes (the project-wide tie-break)."""
    return np.array(sorted(range(len(ids)), key=lambda i: ids[i].encode("utf-8")), dtype=np.int64)


def _check_k(k: int) -> None:
    if k < 1:
        raise InvalidParameter(f"k must be at least 1, got {k}; pass -k 1 or more")


def kmeans_float(
    x: np.ndarray, ids: Sequence[str], k: int, seed: int, max_iter: int
) -> list[tuple[int, str]]:
    """Float k-means++ (D^2 sampling) then Lloyd, and the member nearest each centroid.

    x: float32 (n, d) embeddings; ids: n strings. Returns [(cluster, id)] in cluster order, one
    entry per non-empty cluster (at most min(k, distinct points)). This is the Auto-CoT selection
    with nothing quantized, so it is not exactly unlearnable: the eval baseline for `erase`.
    Rows are put in canonical id order first, so the result depends on the set, not the order.
    """
    _check_k(k)
    if max_iter < 0:
        raise InvalidParameter(f"max_iter must be 0 or more, got {max_iter}")
    n = len(ids)
    if n == 0:
        return []
    order = _canonical_order(ids)
    pts = np.asarray(x, dtype=np.float64)[order]
    sorted_ids = [ids[i] for i in order]
    rng = np.random.default_rng(seed)
    centres = _kmeanspp(pts, k, rng)
    labels = _assign(pts, centres)
    for _ in range(max_iter):
        centres = _update(pts, labels, centres)
        new_labels = _assign(pts, centres)
        # Float Lloyd has a fixed point; stopping there is what Auto-CoT's sklearn KMeans does.
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return _nearest_members(pts, sorted_ids, labels, centres)


def _kmeanspp(pts: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Standard k-means++: first centre uniform, then each next one with probability ∝ D^2.

    Assumes pts (n, d) float64 with n >= 1. Stops early when every point sits on a centre.
    """
    n = pts.shape[0]
    chosen = [int(rng.integers(n))]
    d2 = np.sum((pts - pts[chosen[0]]) ** 2, axis=1)
    while len(chosen) < k:
        total = float(d2.sum())
        if total <= 0.0:
            break
        nxt = int(rng.choice(n, p=d2 / total))
        chosen.append(nxt)
        d2 = np.minimum(d2, np.sum((pts - pts[nxt]) ** 2, axis=1))
    return pts[chosen].copy()


def _sq_dists(pts: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(n, k) squared Euclidean distances, clipped at 0 against rounding."""
    d = (
        np.sum(pts * pts, axis=1)[:, None]
        - 2.0 * pts @ centres.T
        + np.sum(centres * centres, axis=1)[None, :]
    )
    return np.maximum(d, 0.0)


def _assign(pts: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # argmin returns the first minimum: ties go to the lower cluster index.
    return np.argmin(_sq_dists(pts, centres), axis=1)


def _update(pts: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Cluster means; an empty cluster keeps its previous centre."""
    k, d = centres.shape
    sums = np.zeros((k, d))
    np.add.at(sums, labels, pts)
    counts = np.bincount(labels, minlength=k)
    out = centres.copy()
    filled = counts > 0
    out[filled] = sums[filled] / counts[filled, None]
    return out


def _nearest_members(
    pts: np.ndarray, ids: list[str], labels: np.ndarray, centres: np.ndarray
) -> list[tuple[int, str]]:
    """Per non-empty cluster, its member nearest the centre; ties by id (rows are id-sorted)."""
    d = _sq_dists(pts, centres)
    picks = []
    for j in range(centres.shape[0]):
        members = np.flatnonzero(labels == j)
        if members.size == 0:
            continue
        # Rows are in id order, so argmin's first-minimum rule is the id tie-break.
        best = members[int(np.argmin(d[members, j]))]
        picks.append((j, ids[best]))
    return picks


def _seed_hash(seed: int, record_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00".encode() + record_id.encode("utf-8")).digest()


def random_examples(ids: Sequence[str], k: int, seed: int) -> list[str]:
    """The k ids with the smallest sha256(seed, id), smallest first.

    Each id's rank depends only on (seed, id), so deleting an id that was not selected leaves the
    selection unchanged, and deleting a selected one promotes the next in line: the same result
    as choosing again on the survivors, hence exactly unlearnable.
    """
    _check_k(k)
    return sorted(ids, key=lambda i: (_seed_hash(seed, i), i.encode("utf-8")))[:k]


def knn_examples(
    train_x: np.ndarray, ids: Sequence[str], query_x: np.ndarray, k: int
) -> list[str]:
    """The k train records most cosine-similar to one query, nearest LAST (KATE order).

    train_x: float (n, d); ids: n strings; query_x: float (d,). Ties by id. The nearest goes
    last so it sits right before the query in the prompt.
    """
    _check_k(k)
    if len(ids) == 0:
        return []
    tx = np.asarray(train_x, dtype=np.float64)
    q = np.asarray(query_x, dtype=np.float64).reshape(-1)
    norms = np.linalg.norm(tx, axis=1) * max(float(np.linalg.norm(q)), 1e-300)
    sims = (tx @ q) / np.maximum(norms, 1e-300)
    ranked = sorted(range(len(ids)), key=lambda i: (-sims[i], ids[i].encode("utf-8")))[:k]
    return [ids[i] for i in reversed(ranked)]
