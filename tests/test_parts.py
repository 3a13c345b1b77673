"""A fit split into parts (what a Dask fit runs, one task per part) gives the local fit's bits.

The kernels and combine steps of qkmeans are driven here by a runner that splits the records into
parts and hands the parts' results back in shuffled order, so the combine steps cannot lean on
order; the race combine is also tested on constructed near-ties, which random data never gives.
"""

from __future__ import annotations

import math
import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_qkmeans import assert_same, datasets, pick_batch

from erase_cli import qkmeans as qk
from erase_cli.qkmeans import ArraySource, Params, fit, forget, to_fixed

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class PartsRunner:
    """The records cut into parts at random places, each part's result returned in a shuffled
    order; every pass cuts each part into blocks of a new random size, as the store's source
    streams chunks on one pass and serves them from memory on the next."""

    def __init__(self, ids, x, cuts: list[int], rng: random.Random, idh=None):
        bounds = [0, *sorted(cuts), len(ids)]
        self._parts = [
            (ids[lo:hi], x[lo:hi], None if idh is None else idh[lo:hi]) for lo, hi in zip(bounds, bounds[1:])
        ]
        self.n = len(ids)
        self.rng = rng
        self.memos: list[qk.RaceMemo | None] = [None] * len(self.parts)
        self.calls = 0

    @property
    def parts(self) -> list[ArraySource]:
        return [ArraySource(ids, x, idh, block_size=self.rng.randint(1, 7)) for ids, x, idh in self._parts]

    def _shuffled(self, results: list) -> list:
        self.calls += 1
        self.rng.shuffle(results)
        return results

    def race(self, r, mix, pending, start):
        out = []
        for i, part in enumerate(self.parts):
            partial, self.memos[i] = qk.race_part(part.blocks(), None if start else self.memos[i], pending, r, mix)
            out.append(partial)
        return self._shuffled(out)

    def lloyd(self, C):
        return self._shuffled([qk.lloyd_part(p.vectors(), C) for p in self.parts])

    def final(self, C, M, only=None):
        return self._shuffled([qk.final_part(p.blocks(), C, M, only) for p in self.parts])


def _runner(ids, x, data) -> PartsRunner:
    n = len(ids)
    cuts = data.draw(st.lists(st.integers(0, n), max_size=5)) if n else []
    return PartsRunner(ids, x, cuts, random.Random(data.draw(st.integers(0, 2**32 - 1))))


@PROPS
@given(datasets(), st.data())
def test_fit_over_parts_is_the_local_fit(ds, data):
    ids, x, params, d = ds
    runner = _runner(ids, x, data)
    assert_same(fit(runner, params, d), fit(ArraySource(ids, x), params, d))
    assert runner.calls or not ids


@PROPS
@given(datasets(max_n=40), st.data())
def test_forget_refit_over_parts_is_the_local_one(ds, data):
    ids, x, params, d = ds
    if not ids:
        return
    state = fit(ArraySource(ids, x), params, d)
    batch = pick_batch(data, ids, x, state)
    keep = [i for i, rid in enumerate(ids) if rid not in set(batch)]
    bx = x[[ids.index(b) for b in batch]]
    sur_ids, sur_x = [ids[i] for i in keep], x[keep]
    local, _ = forget(state, batch, bx, ArraySource(sur_ids, sur_x))
    parted, _ = forget(state, batch, bx, _runner(sur_ids, sur_x, data))
    assert_same(parted, local)
    assert_same(parted, fit(ArraySource(sur_ids, sur_x), params, d))


# ---- the race combine on constructed near-ties


def _float_key(a: int, w: int) -> float:
    """The float key the race computes for U = a / 2**54 and weight w (qkmeans._neg_log_u)."""
    if (a >> 1) >= 1 << 52:
        return -math.log1p(-((1 << 54) - a) / 2**54) / w
    return -math.log(a / 2**54) / w


def _cand(a: int, w: int, rid: str) -> qk._RaceCandidate:
    return qk._RaceCandidate(_float_key(a, w), a, w, rid, np.array([len(rid)], dtype=np.int64))


def _near_tie_pairs(count: int) -> list[tuple[qk._RaceCandidate, qk._RaceCandidate]]:
    """Pairs whose float keys order them one way and whose exact keys the other way (or tie):
    U2 = U1**2 rounded to the 2**-54 grid, with weight 2 * w1, makes the keys equal up to a
    relative 2**-54, far below what float64 resolves."""
    rng = random.Random(7)
    out = []
    while len(out) < count:
        a1 = rng.randrange(1 << 40, 1 << 54) | 1
        w1 = rng.randrange(1, 1 << 30)
        a2 = (a1 * a1 >> 54) | 1
        c1, c2 = _cand(a1, w1, "one"), _cand(a2, 2 * w1, "two")
        exact1, exact2 = qk._exact_key(a1, w1), qk._exact_key(a2, 2 * w1)
        if c1.key <= c2.key and exact2 < exact1:
            out.append((c1, c2))
        elif c2.key <= c1.key and exact1 < exact2:
            out.append((c2, c1))
    return out


def test_float_key_helper_follows_the_race():
    idh = qk.id_hash64([f"x{i}" for i in range(500)])
    nl, a = qk._neg_log_u(idh, np.uint64(99))
    # The same formula; the libm and numpy logarithms may differ in the last bit, which the
    # near-tie window is there to absorb.
    assert np.allclose([_float_key(int(v), 1) for v in a], nl, rtol=4e-16, atol=0)


def test_race_combine_decides_near_ties_exactly_across_parts():
    for float_first, exact_first in _near_tie_pairs(20):
        # Each part alone would crown its own candidate; the float minimum is the wrong one.
        part_a = qk.RacePartial(3, 0, True, float_first.key, [float_first])
        part_b = qk.RacePartial(4, 0, True, exact_first.key, [exact_first])
        assert float_first.key <= exact_first.key
        for parts in ([part_a, part_b], [part_b, part_a]):
            assert qk.race_winner(parts).id == exact_first.id
        # The same pair inside one part (the local fit) agrees.
        one = qk.RacePartial(7, 0, True, float_first.key, [float_first, exact_first])
        assert qk.race_winner([one]).id == exact_first.id


def test_race_combine_keeps_a_part_whose_minimum_is_only_within_the_window():
    base = _cand(3 << 50 | 1, 5, "m")
    # Part B's best key is above part A's but inside the window: B's candidate must be weighed.
    a2 = (base.a * base.a >> 54) | 1
    other = _cand(a2, 10, "a")
    assert other.key != base.key and abs(other.key - base.key) <= 1e-12 * base.key
    got = qk.race_winner(
        [qk.RacePartial(1, 0, True, min(base.key, other.key), [base]), qk.RacePartial(1, 0, True, other.key, [other])]
    )
    want = min([base, other], key=lambda c: (qk._exact_key(c.a, c.weight), c.id))
    assert got.id == want.id


def test_race_combine_breaks_exact_ties_by_id_and_ignores_dead_parts():
    tie_b, tie_a = _cand(1 << 50 | 1, 3, "b"), _cand(1 << 50 | 1, 3, "a")
    near = _cand(1 << 52 | 1, 3, "0")  # a larger U: a smaller key, beyond the window of the ties
    assert near.key < tie_a.key * (1 - 1e-9)
    parts = [
        qk.RacePartial(1, 0, True, tie_b.key, [tie_b]),
        qk.RacePartial(1, 0, True, tie_a.key, [tie_a]),
    ]
    assert qk.race_winner(parts).id == "a"
    assert qk.race_winner(parts[::-1]).id == "a"
    # A part with a clearly smaller key wins outright: the ties fall outside its window.
    assert qk.race_winner([*parts, qk.RacePartial(1, 0, True, near.key, [near])]).id == "0"
    # A part with no live weight contributes nothing; all parts dead ends the race.
    dead = qk.RacePartial(5, 0, False, math.inf, [])
    assert qk.race_winner([dead, *parts]).id == "a"
    assert qk.race_winner([dead, dead]) is None


def test_fit_with_near_tied_draws_split_across_parts():
    # Two records per part whose round-0 keys tie exactly (equal hashes): the id decides, and the
    # parts must agree with the local fit whatever the cut.
    ids = ["z", "y", "x", "w"]
    x = to_fixed(np.array([[1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6]], dtype=np.float32))
    idh = np.full(4, 424242, dtype=np.uint64)
    p = Params(k=2, eps=0.05, dim=None, seed=3, max_iter=2)
    local = fit(ArraySource(ids, x, idh=idh), p, 2)
    assert local.init_ids[0] == "w"
    for cut in range(5):
        runner = PartsRunner(ids, x, [cut], random.Random(cut), idh=idh)
        assert_same(fit(runner, p, 2), local)
