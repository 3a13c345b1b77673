"""Quantized k-means: hand-computed toys, two-path agreements and the exactness contract

forget(fit(D), X) == fit(D \\ X)   bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from erase_cli import qkmeans as qk
from erase_cli.errors import InvalidInput, InvalidParameter, StoreDamaged
from erase_cli.qkmeans import (
    SCALE,
    ArraySource,
    Block,
    Params,
    Projector,
    State,
    assign,
    certify,
    crossing_rate,
    fit,
    forget,
    id_hash64,
    splitmix64,
    to_fixed,
)

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

M64 = (1 << 64) - 1


def py_splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def py_hash(*parts: int) -> int:
    h = 0
    for p in parts:
        h = py_splitmix64(h ^ (p & M64))
    return h


# ----------------------------------------------------------------------------------------------
# Hashing, fixed point, projection


def test_splitmix64_matches_reference_generator():
    # First output of the SplitMix64 generator seeded with 0 (Vigna's reference implementation).
    assert int(splitmix64(np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF
    xs = [1, 2**63, M64, 0x123456789ABCDEF0]
    got = splitmix64(np.array(xs, dtype=np.uint64))
    assert [int(v) for v in got] == [py_splitmix64(v) for v in xs]


def test_id_hash64_is_sha256_prefix():
    ids = ["a", "é", "r-17", ""]
    want = [int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") for i in ids]
    assert [int(v) for v in id_hash64(ids)] == want


def test_to_fixed_rounds_to_nearest():
    x = np.array([[0.5, -0.25, 1 / SCALE * 0.4, 1 / SCALE * 0.6]], dtype=np.float32)
    assert to_fixed(x).tolist() == [[32768, -16384, 0, 1]]
    assert to_fixed(x).dtype == np.int64


def test_projection_is_exact_integer_arithmetic():
    d_in, m, seed = 10, 4, 7
    proj = Projector(d_in, m, seed)
    assert proj.d == m and proj.q == 2
    rng = np.random.default_rng(1)
    x = rng.integers(-(2**16), 2**16, size=(5, d_in))
    y = proj(x)
    for r in range(5):
        for i in range(m):
            signs = [1 - 2 * (py_hash(seed, qk._TAG_PROJ, i, j) >> 63) for j in range(d_in)]
            assert int(proj.R[i, 0]) == signs[0]
            total = sum(s * int(v) for s, v in zip(signs, x[r]))
            assert int(y[r, i]) == total // 2  # Python floor division, negative values included


def test_projection_identity_without_dim():
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    proj = Projector(3, None, 0)
    assert proj.d == 3 and np.array_equal(proj(x), x)


def test_theta_is_hash_mod_E():
    p = Params(k=2, eps=0.1, dim=None, seed=11, max_iter=3)
    th = qk._theta(p, 2, 5)
    assert th.tolist() == [py_hash(11, qk._TAG_THETA, 2, i) % p.E for i in range(5)]
    assert p.E == round(0.1 * 65536) and p.eps_effective == p.E / 65536


# ----------------------------------------------------------------------------------------------
# The lattice and one Lloyd step, by hand


def quantize1(S, N, theta, E, prev=0):
    out = qk._quantize(np.array([[S]]), np.array([N]), np.array([theta]), E, np.array([[prev]]))
    return int(out[0, 0])


def test_quantizer_by_hand():
    # mean 12.5 -> (12.5 - 3) / 10 = 0.95 -> 1 -> 3 + 10 = 13
    assert quantize1(25, 2, 3, 10) == 13
    # exactly half way rounds up: mean 8 -> 0.5 -> 1 -> 13
    assert quantize1(16, 2, 3, 10) == 13
    # mean -2 -> -0.5 -> 0 -> 3 ; mean -9 -> -1.2 -> -1 -> -7 ; mean -8.1 (S=-81, N=10) -> -1.11 -> -7
    assert quantize1(-2, 1, 3, 10) == 3
    assert quantize1(-9, 1, 3, 10) == -7
    assert quantize1(-81, 10, 3, 10) == -7
    # mean -13 -> -1.6 -> -2 -> -17
    assert quantize1(-13, 1, 3, 10) == -17
    # an empty cluster keeps its previous centroid
    assert quantize1(0, 0, 3, 10, prev=42) == 42


def test_one_lloyd_step_by_hand():
    # E = 1 and theta = 0: the lattice is Z^2 and a centroid is the mean rounded half up.
    p = Params(k=2, eps=1 / SCALE, dim=None, seed=0, max_iter=1)
    pts = [(0, 0), (2, 0), (0, 3), (10, 10), (11, 10), (10, 13), (5, 5)]
    src = ArraySource([f"p{i}" for i in range(7)], np.array(pts))
    C = np.zeros((2, 2, 2), dtype=np.int64)
    C[0] = [[0, 0], [10, 10]]
    S = np.zeros((1, 2, 2), dtype=np.int64)
    N = np.zeros((1, 2), dtype=np.int64)
    qk._lloyd(qk.LocalRunner(src), p, C, S, N, 1, None)
    # (5, 5) is equidistant from both centres: the tie goes to cluster 0.
    assert S[0].tolist() == [[7, 8], [31, 33]]
    assert N[0].tolist() == [4, 3]
    # cluster 0: mean (1.75, 2) -> (2, 2); cluster 1: mean (10.33, 11) -> (10, 11)
    assert C[1].tolist() == [[2, 2], [10, 11]]


def test_assign_ties_to_lower_index_and_exact_distances():
    C = np.array([[0, 0], [2, 0], [0, 0]])
    labels, d2 = assign(np.array([[1, 0], [3, 1], [0, 0]]), C)
    assert labels.tolist() == [0, 1, 0]
    assert d2.tolist() == [1, 2, 0]


# ----------------------------------------------------------------------------------------------
# The race


def test_race_stops_at_distinct_points():
    x = np.array([[1, 0], [1, 0], [0, 5], [0, 5], [0, 5], [7, 7]]) * 1000
    src = ArraySource([f"r{i}" for i in range(6)], x)
    s = fit(src, Params(k=5, eps=0.05, dim=None, seed=2, max_iter=2), 2)
    assert s.k_eff == 3
    chosen = {tuple(v) for v in s.centroids[0].tolist()}
    assert chosen == {(1000, 0), (0, 5000), (7000, 7000)}


def test_round_zero_winner_is_largest_draw():
    rng = np.random.default_rng(5)
    ids = [f"id{i}" for i in range(40)]
    x = rng.integers(-5000, 5000, size=(40, 3))
    s = fit(ArraySource(ids, x), Params(k=1, eps=0.05, dim=None, seed=9, max_iter=1), 3)
    mix = py_hash(9, qk._TAG_RACE, 0)
    draws = {i: py_splitmix64(int(h) ^ mix) >> 11 for i, h in zip(ids, id_hash64(ids))}
    assert s.init_ids == [max(ids, key=draws.get)]


def test_exact_key_ties_break_by_id():
    # Equal hashes give equal draws: every round-0 key ties exactly, so the smallest id wins,
    # whatever the row order.
    ids = ["b", "c", "a", "d"]
    x = np.array([[1, 0], [0, 1], [1, 1], [2, 2]]) * 1000
    idh = np.full(4, 12345, dtype=np.uint64)
    p = Params(k=1, eps=0.05, dim=None, seed=0, max_iter=1)
    assert fit(ArraySource(ids, x, idh=idh), p, 2).init_ids == ["a"]
    assert fit(ArraySource(ids[::-1], x[::-1], idh=idh), p, 2).init_ids == ["a"]


def test_neg_log_u_is_accurate_near_one():
    idh = id_hash64([f"x{i}" for i in range(2000)])
    nl, a = qk._neg_log_u(idh, np.uint64(77))
    exact = [float(-qk._DECIMAL.ln(qk._DECIMAL.divide(int(v), 1 << 54))) for v in a[:200]]
    assert np.allclose(nl[:200], exact, rtol=1e-14, atol=0)
    assert (nl > 0).all()


# ----------------------------------------------------------------------------------------------
# Datasets for the properties


@st.composite
def datasets(draw, max_n=60):
    n = draw(st.integers(0, max_n))
    d = draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**63 - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # A few cluster centres, points around them, then exact and near duplicates.
    centres = rng.normal(size=(draw(st.integers(1, 5)), d))
    spread = draw(st.sampled_from([0.02, 0.2, 1.0]))
    v = centres[rng.integers(0, len(centres), n)] + spread * rng.normal(size=(n, d))
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
    x = to_fixed(v.astype(np.float32))
    if n > 1:
        dup = rng.random(n) < draw(st.sampled_from([0.0, 0.3, 0.8]))
        src_rows = rng.integers(0, n, n)
        x[dup] = x[src_rows[dup]]
        near = rng.random(n) < 0.2
        x[near] += rng.integers(-1, 2, size=(int(near.sum()), d))
    dim = draw(st.one_of(st.none(), st.integers(1, d - 1)))
    params = Params(
        k=draw(st.integers(1, 6)),
        eps=draw(st.sampled_from([0.01, 0.05, 0.2, 0.6, 1.5])),
        dim=dim,
        seed=seed,
        max_iter=draw(st.integers(1, 4)),
        route_size=draw(st.one_of(st.none(), st.integers(1, 12))),
    )
    xw = Projector(d, dim, seed)(x)
    ids = [f"r{i:03d}" if i % 3 else f"é{i}" for i in rng.permutation(n).tolist()]
    return ids, xw, params, d


def source(ids, x, block_size=7):
    return ArraySource(ids, x, block_size=block_size)


def pick_batch(data, ids, x, state: State) -> list[str]:
    mode = data.draw(st.sampled_from(["single", "batch", "example", "init", "cluster", "all"]))
    if mode == "all":
        return list(ids)
    if mode == "example" and state.examples:
        return [data.draw(st.sampled_from(state.examples))[1]]
    if mode == "init" and state.init_ids:
        return [data.draw(st.sampled_from(state.init_ids))]
    if mode == "cluster" and state.k_eff:
        labels, _ = assign(x, state.centroids[-1])
        j = data.draw(st.integers(0, state.k_eff - 1))
        return [i for i, lab in zip(ids, labels) if lab == j]
    if mode == "batch":
        return data.draw(st.lists(st.sampled_from(ids), unique=True, max_size=len(ids)))
    return [data.draw(st.sampled_from(ids))]


def assert_same(a: State, b: State):
    assert a.differences(b) == []
    assert a.state_digest() == b.state_digest()
    ta, tb = a.to_arrays(), b.to_arrays()
    for key in ("centroids", "sums", "counts", "final_counts", "init_ids_utf8", "init_ids_off", "shape"):
        assert np.array_equal(ta[key], tb[key]), key
    assert a.examples == b.examples
    assert a.routes == b.routes


def forget_ids(state, ids, x, batch, block_size=7):
    index = {i: r for r, i in enumerate(ids)}
    rows = [index[i] for i in batch]
    keep = sorted(set(range(len(ids))) - set(rows))
    surv = source([ids[r] for r in keep], x[keep], block_size)
    new, cert = forget(state, batch, x[rows].reshape(len(rows), x.shape[1]), surv)
    return new, cert, surv


# ----------------------------------------------------------------------------------------------
# The exactness contract


@PROPS
@given(datasets(), st.data())
def test_forget_equals_refit(ds, data):
    ids, x, params, d = ds
    if not ids:
        return
    state = fit(source(ids, x), params, d)
    before = state.state_digest()
    batch = pick_batch(data, ids, x, state)
    new, cert, surv = forget_ids(state, ids, x, batch)
    assert state.state_digest() == before  # forget does not mutate its input
    event("race refit" if cert.first_round is not None else "lloyd refit" if cert.first_iter else "no crossing")
    event(f"n {'<10' if len(ids) < 10 else '<30' if len(ids) < 30 else '>=30'}")
    assert_same(new, fit(surv, params, d))
    if not cert.crossings:
        assert new.centroids.tobytes() == state.centroids.tobytes()


@settings(max_examples=60, deadline=None)
@given(datasets(max_n=25), st.data())
def test_sequential_deletions_until_empty(ds, data):
    ids, x, params, d = ds
    # A short candidate cache makes replacements run out often, so the rescan path is exercised.
    cache = data.draw(st.sampled_from([1, 2, qk.N_CANDIDATES]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qk, "N_CANDIDATES", cache)
        state = fit(source(ids, x), params, d)
        order = data.draw(st.permutations(range(len(ids))))
        live = list(range(len(ids)))
        for r in order:
            live.remove(r)
            cur_ids = [ids[i] for i in live] + [ids[r]]
            cur_x = np.concatenate([x[live], x[[r]]])
            state, _, surv = forget_ids(state, cur_ids, cur_x, [ids[r]], block_size=3)
            assert_same(state, fit(surv, params, d))
            assert all(len(c) <= params.n_candidates for c in state.candidates)
        assert_same(state, State.empty(params, d))


@PROPS
@given(datasets(), st.data())
def test_state_is_order_and_block_free(ds, data):
    ids, x, params, d = ds
    ref = fit(source(ids, x, 4096), params, d)
    perm = np.array(data.draw(st.permutations(range(len(ids)))), dtype=np.int64)
    for bs in (1, 3):
        other = fit(source([ids[i] for i in perm], x[perm].reshape(x.shape), bs), params, d)
        assert_same(other, ref)
        assert other.candidates == ref.candidates and other.cand_dists == ref.cand_dists


def _cases(count, max_n=40):
    rng = np.random.default_rng(1234)
    for c in range(count):
        n = int(rng.integers(8, max_n))
        d = int(rng.integers(2, 6))
        v = rng.normal(size=(3, d))[rng.integers(0, 3, n)] + 0.3 * rng.normal(size=(n, d))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        x = to_fixed(v)
        ids = [f"c{c}-{i}" for i in range(n)]
        params = Params(
            k=int(rng.integers(2, 5)),
            eps=float(rng.choice([0.05, 0.2, 0.5])),
            dim=None,
            seed=int(rng.integers(0, 2**62)),
            max_iter=int(rng.integers(1, 5)),
        )
        yield ids, x, params, d, rng


def test_every_forget_path_is_exercised_and_exact():
    paths = {"none": 0, "lloyd": 0, "race": 0, "replace": 0}
    for ids, x, params, d, rng in _cases(40):
        state = fit(source(ids, x), params, d)
        b = int(rng.integers(1, 4))
        batch = [ids[i] for i in rng.choice(len(ids), b, replace=False)]
        new, cert, surv = forget_ids(state, ids, x, batch)
        assert_same(new, fit(surv, params, d))
        if cert.first_round is not None:
            paths["race"] += 1
        elif cert.first_iter is not None:
            paths["lloyd"] += 1
        else:
            paths["none"] += 1
            paths["replace"] += new.examples != state.examples
    assert all(v > 0 for v in paths.values()), paths


def test_candidate_rescan_when_list_runs_out():
    # One tight cluster bigger than the candidate cache: forgetting every cached candidate forces
    # a rescan, and the new example must be the refit's.
    rng = np.random.default_rng(3)
    n = 3 * qk.N_CANDIDATES
    x = 1000 * np.ones((n, 2), dtype=np.int64) + rng.integers(-50, 50, size=(n, 2))
    ids = [f"m{i}" for i in range(n)]
    for seed in range(50):
        params = Params(k=1, eps=1.0, dim=None, seed=seed, max_iter=2)
        state = fit(source(ids, x), params, 2)
        if state.init_ids[0] in state.candidates[0]:
            continue  # the winner cannot be forgotten without a refit
        batch = list(state.candidates[0])
        new, cert, surv = forget_ids(state, ids, x, batch)
        if not cert.crossings:
            break
    assert not cert.crossings and not set(batch) & set(new.candidates[0])
    assert len(new.candidates[0]) == qk.N_CANDIDATES
    assert_same(new, fit(surv, params, 2))


def _tight_cluster_forgets(route_size: int, drop: int):
    """(state, forgotten state, refit) for tight one-cluster fits where forgetting `drop` of the
    ranked members crosses nothing: the route must be refilled from the survivors."""
    rng = np.random.default_rng(5)
    n = 60
    x = 1000 * np.ones((n, 2), dtype=np.int64) + rng.integers(-50, 50, size=(n, 2))
    ids = [f"m{i}" for i in range(n)]
    for seed in range(40):
        params = Params(k=1, eps=1.0, dim=None, seed=seed, max_iter=2, route_size=route_size)
        state = fit(source(ids, x), params, 2)
        batch = [i for i in state.candidates[0][: drop + 1] if i != state.init_ids[0]][:drop]
        new, cert, surv = forget_ids(state, ids, x, batch)
        if not cert.crossings:
            yield state, batch, new, fit(surv, params, 2)


def test_route_rescan_when_fewer_than_route_size_remain():
    cases = list(_tight_cluster_forgets(route_size=8, drop=9))
    assert cases
    for state, batch, new, refit in cases:
        assert len(state.candidates[0]) == 16 and state.routes[0][1] == state.candidates[0][:8]
        assert len(new.routes[0][1]) == 8 and not set(batch) & set(new.routes[0][1])
        assert_same(new, refit)


def test_weakened_rescan_rule_breaks_routes(monkeypatch):
    """The old rule (rescan only an emptied list) gives routes a refit would not: caught."""

    def mismatches():
        return sum(bool(new.differences(refit)) for _, _, new, refit in _tight_cluster_forgets(8, 9))

    assert mismatches() == 0
    monkeypatch.setattr(qk, "_needed", lambda route_size, counts: [min(1, int(c)) for c in counts])
    assert mismatches() > 0


def test_route_rule_is_nearest_nonempty_centroid_ties_low():
    C = np.array([[0, 0], [10, 0], [10, 0], [100, 100]], dtype=np.int64)
    assert qk.route(C, [0, 1, 2, 3], np.array([9, 0])) == 1  # 1 and 2 tie: the lower index
    assert qk.route(C, [2, 3, 0], np.array([9, 0])) == 2  # 1 is empty (not listed)
    assert qk.route(C, [3], np.array([0, 0])) == 3
    assert qk.route(C, [], np.array([0, 0])) is None
    rng = np.random.default_rng(0)
    for _ in range(200):
        C = rng.integers(-5, 6, size=(6, 3))
        q = rng.integers(-5, 6, size=3)
        live = sorted(rng.choice(6, int(rng.integers(1, 7)), replace=False).tolist())
        d2 = {j: int(((C[j] - q) ** 2).sum()) for j in live}
        assert qk.route(C, live, q) == min(live, key=lambda j: (d2[j], j))


def test_legacy_state_without_routes_round_trips():
    ids, x, params, d, _ = next(_cases(1))
    legacy = fit(source(ids, x), params, d)
    assert legacy.params.route_size is None and legacy.routes == []
    arrays = legacy.to_arrays()
    assert len(arrays["params_int"]) == 4
    assert_same(State.from_arrays(arrays), legacy)
    routed = fit(source(ids, x), Params(**{**params.__dict__, "route_size": 4}), d)
    assert routed.examples == legacy.examples and routed.state_digest() != legacy.state_digest()
    assert [r[0] for r in routed.routes] == [j for j, _ in routed.examples]
    assert all(r[1][0] == e for r, (_, e) in zip(routed.routes, routed.examples))


def test_weakened_certificate_is_caught(monkeypatch):
    """The property can fail: a certificate that skips the last iteration's check is caught."""

    real = qk._trace

    def skip_last_iteration(state, x):
        t, changed, dS, dN = real(state, x)
        if t == state.params.max_iter:
            return None, [], dS, dN
        return t, changed, dS, dN

    def mismatches():
        bad = 0
        for ids, x, params, d, rng in _cases(60):
            state = fit(source(ids, x), params, d)
            new, _, surv = forget_ids(state, ids, x, [ids[int(rng.integers(0, len(ids)))]])
            bad += bool(new.differences(fit(surv, params, d)))
        return bad

    assert mismatches() == 0
    monkeypatch.setattr(qk, "_trace", skip_last_iteration)
    assert mismatches() > 0


def test_forget_everything_is_the_empty_state():
    rng = np.random.default_rng(0)
    x = rng.integers(-9000, 9000, size=(12, 3))
    ids = [str(i) for i in range(12)]
    params = Params(k=3, eps=0.1, dim=None, seed=1, max_iter=3)
    new, cert, surv = forget_ids(fit(source(ids, x), params, 3), ids, x, ids)
    assert cert.action_needed == "refit" and cert.first_round == 0
    assert_same(new, State.empty(params, 3))
    assert_same(fit(surv, params, 3), State.empty(params, 3))
    assert new.examples == [] and new.n == 0


# ----------------------------------------------------------------------------------------------
# Certificate, crossing rate


@PROPS
@given(datasets(max_n=40))
def test_certify_is_pure_and_crossing_rate_matches_certify(ds):
    ids, x, params, d = ds
    state = fit(source(ids, x), params, d)
    digest, arrays = state.state_digest(), {k: v.copy() for k, v in state.to_arrays().items()}
    singles = [bool(certify(state, [i], x[[r]]).crossings) for r, i in enumerate(ids)]
    assert state.state_digest() == digest
    assert all(np.array_equal(v, state.to_arrays()[k]) for k, v in arrays.items())
    ids_arr = np.empty(len(ids), dtype=object)
    ids_arr[:] = ids
    blk = Block(np.arange(len(ids)), ids_arr, id_hash64(ids), x)
    rate = crossing_rate(state, blk)
    assert 0.0 <= rate <= 1.0
    assert rate == (sum(singles) / len(ids) if ids else 0.0)


def test_certificate_reports_winner_and_first_iteration():
    for ids, x, params, d, _rng in _cases(10):
        state = fit(source(ids, x), params, d)
        w = state.init_ids[-1]
        cert = certify(state, [w], x[[ids.index(w)]])
        assert cert.first_round == state.k_eff - 1 and (0, state.k_eff - 1) in cert.crossings
        assert cert.action_needed == "refit"
        for r, i in enumerate(ids):
            c = certify(state, [i], x[[r]])
            if c.first_iter is not None:
                assert all(t == c.first_iter for t, _ in c.crossings)
                assert 1 <= c.first_iter <= params.max_iter


# ----------------------------------------------------------------------------------------------
# Parameters, persistence


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(k=0), "k = 8"),
        (dict(eps=0.0), "eps = 0.1"),
        (dict(eps=1e-7), "eps = 0.0000"),
        (dict(eps=float("nan")), "eps = 0.1"),
        (dict(dim=0), "dim = 8"),
        (dict(dim=9), "dim = 8"),
        (dict(max_iter=0), "max_iter = 3"),
        (dict(seed=-1), "seed must be"),
        (dict(seed=2**63), "seed must be"),
        (dict(route_size=0), "route_size = 8"),
        (dict(route_size=1000), "route_size = 8"),
    ],
)
def test_params_validate_names_the_fix(kwargs, word):
    """Core messages name the parameter and a value that works, never a CLI flag."""
    p = Params(**{**dict(k=2, eps=0.1, dim=None, seed=0, max_iter=3), **kwargs})
    with pytest.raises(InvalidParameter, match=word) as info:
        p.validate(8)
    assert "--" not in str(info.value) and "-k" not in str(info.value)


def test_huge_vectors_are_refused():
    x = np.array([[2**40, 0], [0, 2**40]])
    with pytest.raises(InvalidInput):
        fit(source(["a", "b"], x), Params(k=1, eps=0.1, dim=None, seed=0, max_iter=1), 2)


def test_state_round_trips_through_npz():
    for ids, x, params, d, _ in _cases(3):
        state = fit(source(ids, x), params, d)
        buf = io.BytesIO()
        np.savez(buf, **state.to_arrays())
        buf.seek(0)
        with np.load(buf, allow_pickle=False) as z:
            back = State.from_arrays(dict(z))
        assert_same(back, state)
        assert back.candidates == state.candidates
    empty = State.empty(params, d)
    assert_same(State.from_arrays(empty.to_arrays()), empty)


@pytest.mark.parametrize("damage", ["missing", "dtype", "shape", "counts", "utf8"])
def test_damaged_state_is_refused(damage):
    ids, x, params, d, _ = next(_cases(1))
    arrays = fit(source(ids, x), params, d).to_arrays()
    if damage == "missing":
        del arrays["sums"]
    elif damage == "dtype":
        arrays["centroids"] = arrays["centroids"].astype(np.float32)
    elif damage == "shape":
        arrays["sums"] = arrays["sums"][:, :1]
    elif damage == "counts":
        arrays["counts"] = arrays["counts"] + 1
    else:
        arrays["init_ids_utf8"] = np.full_like(arrays["init_ids_utf8"], 0xFF)
    with pytest.raises(StoreDamaged, match="erase fit"):
        State.from_arrays(arrays)


def test_empty_fit_and_differences_report():
    p = Params(k=3, eps=0.1, dim=2, seed=5, max_iter=2)
    e = fit(source([], np.zeros((0, 2), dtype=np.int64)), p, 4)
    assert_same(e, State.empty(p, 4))
    assert e.centroids.shape == (3, 0, 2) and e.examples == []
    other = State.empty(Params(k=3, eps=0.2, dim=2, seed=5, max_iter=2), 4)
    assert e.differences(other) and e.state_digest() != other.state_digest()
    assert math.isclose(p.eps_effective, p.E / SCALE)


def test_progress_reports_every_stage_and_numpy_ints_are_accepted():
    ids, x, _, d, _ = next(_cases(1))
    params = Params(k=np.int64(3), eps=0.2, dim=None, seed=np.int64(8), max_iter=np.int64(2))
    seen = []
    state = fit(source(ids, x), params, d, lambda stage, done, total: seen.append((stage, done, total)))
    assert ("lloyd", 2, 2) in seen and ("k-means++", 1, 3) in seen and seen[-1] == ("examples", 1, 1)
    plain = fit(source(ids, x), Params(k=3, eps=0.2, dim=None, seed=8, max_iter=2), d)
    assert_same(state, plain)
