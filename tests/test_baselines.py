import numpy as np
import pytest

from erase_cli.baselines import kmeans_float, knn_examples, random_examples
from erase_cli.errors import InvalidParameter


def _blobs(seed=0, per=10):
    """Three well-separated 2-d blobs; ids name their blob so the expected clusters are known."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x, ids = [], []
    for b, c in enumerate(centres):
        for i in range(per):
            x.append(c + rng.normal(scale=0.3, size=2))
            ids.append(f"b{b}-{i:02d}")
    return np.array(x, dtype=np.float32), ids


def test_kmeans_float_finds_one_example_per_blob():
    x, ids = _blobs()
    picks = kmeans_float(x, ids, k=3, seed=1, max_iter=20)
    assert [c for c, _ in picks] == sorted(c for c, _ in picks)
    assert sorted(i.split("-")[0] for _, i in picks) == ["b0", "b1", "b2"]


def test_kmeans_float_picks_the_member_nearest_the_centroid():
    x = np.array([[0.0], [1.0], [2.0], [10.0]], dtype=np.float32)
    # One cluster: the mean is 3.25, nearest member is 2.0.
    assert kmeans_float(x, ["a", "b", "c", "d"], k=1, seed=0, max_iter=5) == [(0, "c")]


def test_kmeans_float_ignores_row_order():
    x, ids = _blobs(seed=3)
    perm = np.random.default_rng(7).permutation(len(ids))
    a = kmeans_float(x, ids, k=3, seed=5, max_iter=10)
    b = kmeans_float(x[perm], [ids[i] for i in perm], k=3, seed=5, max_iter=10)
    assert a == b


def test_kmeans_float_is_sklearn_kmeans_on_id_sorted_rows():
    """Pins the Auto-CoT baseline: sklearn's KMeans with these arguments on the rows in id order,
    the member nearest each centre (ties by id) as the cluster's demonstration."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(11)
    x = rng.normal(size=(80, 16)).astype(np.float32)
    ids = [f"id{rng.integers(10**6):06d}-{i}" for i in range(80)]
    k, seed, t = 6, 42, 3
    order = sorted(range(len(ids)), key=lambda i: ids[i].encode())
    xs, sids = x[order], [ids[i] for i in order]
    km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=t, tol=0, random_state=seed).fit(xs)
    want = []
    for j in range(k):
        members = np.flatnonzero(km.labels_ == j)
        d = ((xs[members].astype(np.float64) - km.cluster_centers_[j]) ** 2).sum(axis=1)
        want.append((j, sids[members[int(np.argmin(d))]]))
    assert kmeans_float(x, ids, k=k, seed=seed, max_iter=t) == want


def test_kmeans_float_nearest_member_ties_go_to_the_lower_id():
    # One cluster at 1.0: "b" (0.0) and "a" (2.0) are equally near; the lower id wins.
    x = np.array([[0.0], [2.0]], dtype=np.float32)
    assert kmeans_float(x, ["b", "a"], k=1, seed=0, max_iter=5) == [(0, "a")]


def test_kmeans_float_needs_one_iteration():
    with pytest.raises(InvalidParameter, match="max_iter"):
        kmeans_float(np.eye(2, dtype=np.float32), ["a", "b"], k=1, seed=0, max_iter=0)


def test_kmeans_float_k_larger_than_distinct_points():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    picks = kmeans_float(x, ["x", "y", "z"], k=5, seed=0, max_iter=3)
    assert len(picks) == 2
    assert kmeans_float(np.zeros((0, 2), np.float32), [], k=2, seed=0, max_iter=3) == []


def test_random_examples_deterministic_and_seeded():
    ids = [f"r{i}" for i in range(50)]
    a = random_examples(ids, 5, seed=1)
    assert a == random_examples(list(reversed(ids)), 5, seed=1)
    assert len(set(a)) == 5 and set(a) <= set(ids)
    assert a != random_examples(ids, 5, seed=2)


def test_random_examples_exactly_unlearnable():
    ids = [f"r{i}" for i in range(40)]
    chosen = random_examples(ids, 4, seed=9)
    others = [i for i in ids if i not in chosen]
    for gone in others[:10]:
        assert random_examples([i for i in ids if i != gone], 4, seed=9) == chosen
    # Removing a selected id equals choosing again on the survivors: the rest keep their order.
    survivors = [i for i in ids if i != chosen[1]]
    again = random_examples(survivors, 4, seed=9)
    assert again[:3] == [chosen[0], chosen[2], chosen[3]]
    assert again[3] not in chosen


def test_knn_orders_nearest_last():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]], dtype=np.float32)
    ids = ["east", "north", "northeast", "west"]
    q = np.array([0.9, 0.1], dtype=np.float32)
    assert knn_examples(train, ids, q, 3) == ["north", "northeast", "east"]
    assert knn_examples(train, ids, q, 1) == ["east"]


def test_knn_is_cosine_not_euclidean_and_breaks_ties_by_id():
    train = np.array([[10.0, 0.0], [0.5, 0.5], [1.0, 0.0]], dtype=np.float32)
    # "far" has the same direction as "near": equal cosine, so the lower id ranks nearer (last).
    got = knn_examples(train, ["far", "diag", "near"], np.array([1.0, 0.0]), 2)
    assert got == ["near", "far"]


def test_bad_k_is_a_domain_error():
    with pytest.raises(InvalidParameter):
        random_examples(["a"], 0, seed=0)
    with pytest.raises(InvalidParameter):
        knn_examples(np.eye(2), ["a", "b"], np.ones(2), 0)
