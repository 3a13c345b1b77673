"""Example-selection baselines for `erase eval` (SPEC 3b).

The quantized, exactly unlearnable selection lives in qkmeans.py. These are the references it is
compared against: unquantized k-means (Auto-CoT / ACoT, through scikit-learn as Auto-CoT does), a
hash-ranked random choice and per-query nearest neighbours (KATE). Every tie is broken by the id's
UTF-8 bytes so a result does not depend on row order.
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
        raise InvalidParameter(f"k must be at least 1, got {k}; use k = 1 or more")


def kmeans_float(x: np.ndarray, ids: Sequence[str], k: int, seed: int, max_iter: int) -> list[tuple[int, str]]:
    """Auto-CoT's selection: scikit-learn KMeans, then the member nearest each centre.

    x: float (n, d) embeddings, unprojected; ids: n strings. Rows are put in canonical id order,
    then clustered with `KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=max_iter,
    tol=0, random_state=seed)`; the demonstration of each cluster is its member nearest the
    centre, ties by id. Returns [(cluster, id)] in cluster order, one entry per non-empty cluster.
    k is capped at the number of distinct rows (KMeans needs at least k samples, and duplicate
    centres would leave clusters empty). Nothing is quantized, so this is not exactly
    unlearnable: it is the eval baseline for `erase`.
    """
    from sklearn.cluster import KMeans  # imported here: only `erase eval` needs it

    _check_k(k)
    if max_iter < 1:
        raise InvalidParameter(f"max_iter must be at least 1, got {max_iter}")
    n = len(ids)
    if n == 0:
        return []
    order = _canonical_order(ids)
    pts = np.asarray(x)[order]
    sorted_ids = [ids[i] for i in order]
    n_clusters = min(k, len(np.unique(pts, axis=0)))
    km = KMeans(
        n_clusters=n_clusters,
        init="k-means++",
        n_init=1,
        max_iter=max_iter,
        tol=0,
        random_state=seed,
    ).fit(pts)
    return _nearest_members(pts, sorted_ids, km.labels_, km.cluster_centers_)


def _nearest_members(pts: np.ndarray, ids: list[str], labels: np.ndarray, centres: np.ndarray) -> list[tuple[int, str]]:
    """Per non-empty cluster, its member nearest the centre; ties by id (rows are id-sorted)."""
    p = np.asarray(pts, dtype=np.float64)
    c = np.asarray(centres, dtype=np.float64)
    picks = []
    for j in range(c.shape[0]):
        members = np.flatnonzero(labels == j)
        if members.size == 0:
            continue
        d = np.sum((p[members] - c[j]) ** 2, axis=1)
        # Rows are in id order, so argmin's first-minimum rule is the id tie-break.
        best = members[int(np.argmin(d))]
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


def knn_examples(train_x: np.ndarray, ids: Sequence[str], query_x: np.ndarray, k: int) -> list[str]:
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
