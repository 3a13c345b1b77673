"""Quantized k-means with exact unlearning (SPEC §1-§2, DESIGN "Exact arithmetic" / "Forgetting").

Everything here is integer arithmetic in disguise: vectors are fixed-point int64, centroids live on
an integral lattice, and squared distances are integers below 2**53, so the float64 matmuls that
compute them are exact whatever the BLAS blocking. That is what makes

    forget(fit(D), X) == fit(D \\ X)        (bit for bit)

achievable: a cluster sum minus a point equals the sum computed from scratch, and every random
choice is a hash of (seed, id, round) rather than a draw from a stream.

Hashes: `_hash(a, b, ...)` chains splitmix64 from 0 (h = splitmix64(h ^ part) per part); tags are
the big-endian integers of their ASCII names. theta_t[i] = _hash(seed, "theta", t, i) % E;
R[i, j] = 1 - 2 * (_hash(seed, "proj", i, j) >> 63); the race draw of round r is
U = (2 * (splitmix64(idh ^ _hash(seed, "race", r)) >> 11) + 1) / 2**54.

Shapes: n records, d working dimensions, k_eff clusters, T = params.max_iter iterations.
Private helpers assume valid input; `fit`, `certify`, `forget` and `crossing_rate` validate.
No I/O: the store streams `Block`s through a `Source`.
"""

from __future__ import annotations

import decimal
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, cast

import numpy as np

from erase_cli.errors import InvalidInput, InvalidParameter, StoreDamaged

SCALE = 1 << 16
# Ranked candidates kept per cluster: at least this many, and twice the route size, so that most
# forgets leave enough survivors in the list to name the route without a rescan.
N_CANDIDATES = 16
# Upper limits of the fit parameters: k demonstrations must fit in a prompt and every Lloyd
# iteration is kept in the state, so values far beyond these are mistakes, not workloads.
MAX_K = 10_000
MAX_ITER = 1_000
MAX_ROUTE = 256

Progress = Callable[[str, int, int], None]

# Domain-separation tags for the hashes: distinct constants so that a phase, a projection sign
# and a race draw never reuse one another's stream.
_TAG_THETA = int.from_bytes(b"theta", "big")
_TAG_PROJ = int.from_bytes(b"proj", "big")
_TAG_RACE = int.from_bytes(b"race", "big")

# Near-tie window of the race: float64 keys are accurate to a few ulp (~1e-15 relative), so any key
# within this gap of the minimum might really be the minimum and is re-decided exactly.
_RACE_GAP = 1e-12
_DECIMAL = decimal.Context(prec=110)
_TWO54 = 1 << 54

# Largest integer magnitude for which every partial sum of a float64 dot product is exact.
_EXACT = 1 << 53
# Rows summed at once in float64 (cluster sums): 2**20 rows of magnitude below 2**32 stay exact.
_SUM_ROWS = 1 << 20

_MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------------------------------------
# Hashing and fixed point


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise on uint64, wrapping mod 2**64."""
    z = np.array(x, dtype=np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def _hash(*parts) -> np.ndarray:
    """Chain splitmix64 over the parts (ints or uint64 arrays, broadcast together)."""
    h = np.zeros((), dtype=np.uint64)
    for part in parts:
        if isinstance(part, int):
            part = np.uint64(part & _MASK64)
        h = splitmix64(h ^ np.asarray(part, dtype=np.uint64))
    return h


def id_hash64(ids: Sequence[str]) -> np.ndarray:
    """uint64 per id: the first 8 bytes of sha256(id as UTF-8), big-endian."""
    out = np.empty(len(ids), dtype=np.uint64)
    for i, rid in enumerate(ids):
        out[i] = int.from_bytes(hashlib.sha256(rid.encode("utf-8")).digest()[:8], "big")
    return out


def to_fixed(x: np.ndarray) -> np.ndarray:
    """float (n, d) -> int64 (n, d) fixed point rint(float64(x) * 2**16)."""
    # In place after the first allocation: fresh pages are costly on big matrices.
    y = np.multiply(x, float(SCALE), dtype=np.float64)
    np.rint(y, out=y)
    return y.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Parameters


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Params:
    k: int
    eps: float
    dim: int | None
    seed: int
    max_iter: int
    # Demonstrations per route (cluster prompt); None is a fit made before routes existed, which
    # keeps its 16 candidates and its old state digest.
    route_size: int | None = None

    @property
    def E(self) -> int:
        """The integral lattice step: effective eps = E / 2**16."""
        return int(round(self.eps * SCALE))

    @property
    def eps_effective(self) -> float:
        return self.E / SCALE

    def working_dim(self, d_in: int) -> int:
        return d_in if self.dim is None else self.dim

    @property
    def n_candidates(self) -> int:
        return N_CANDIDATES if self.route_size is None else max(N_CANDIDATES, 2 * self.route_size)

    def validate(self, d_in: int) -> None:
        """Raise InvalidParameter naming the parameter and an acceptable value (no CLI flag names:
        the caller may be the CLI, a test or a library user)."""
        if not _is_int(self.k) or not 1 <= self.k <= MAX_K:
            raise InvalidParameter(f"k must be between 1 and {MAX_K} (got {self.k}); use e.g. k = 8")
        if not _is_int(self.max_iter) or not 1 <= self.max_iter <= MAX_ITER:
            raise InvalidParameter(
                f"max_iter must be between 1 and {MAX_ITER} (got {self.max_iter}); use e.g. max_iter = 3"
            )
        if not _is_int(self.seed) or not 0 <= self.seed < 1 << 63:
            raise InvalidParameter(
                f"seed must be an integer in [0, 2**63) (got {self.seed}); use 0 or another non-negative integer"
            )
        if not (isinstance(self.eps, (int, float, np.floating)) and bool(np.isfinite(self.eps)) and self.eps > 0):
            raise InvalidParameter(f"eps must be a positive number (got {self.eps}); use e.g. eps = 0.1")
        if self.E < 1:
            raise InvalidParameter(
                f"eps {self.eps} rounds to a zero lattice step at 2**-16 resolution; use eps = {1 / SCALE:.8f} or more"
            )
        if self.eps > 16:
            raise InvalidParameter(
                f"eps {self.eps} is far larger than the distance between unit vectors; use eps = 2 or less"
            )
        if self.route_size is not None and (not _is_int(self.route_size) or not 1 <= self.route_size <= MAX_ROUTE):
            raise InvalidParameter(
                f"route_size must be between 1 and {MAX_ROUTE} (got {self.route_size}); use e.g. route_size = 8"
            )
        if self.dim is not None and (not _is_int(self.dim) or not 1 <= self.dim <= d_in):
            raise InvalidParameter(
                f"dim must be between 1 and the embedding dimension {d_in} (got {self.dim}); use "
                f"dim = {min(d_in, 32)}, or no dim to keep the embedding dimension"
            )


# ----------------------------------------------------------------------------------------------
# Projection


class Projector:
    """Seeded +-1 (Achlioptas) projection applied exactly to fixed-point integers.

    y = floor((R @ x) / q), q = round(sqrt(m)). R depends on (seed, i, j) only, never on the data,
    so projecting keeps the exactness contract.
    """

    def __init__(self, d_in: int, dim: int | None, seed: int):
        self.d_in = d_in
        self.d = d_in if dim is None else dim
        self.dim = dim
        self.seed = seed
        self.identity = dim is None
        if self.identity:
            self.R = None
            self.q = 1
        else:
            assert dim is not None
            rows = np.arange(dim, dtype=np.uint64)[:, None]
            cols = np.arange(d_in, dtype=np.uint64)[None, :]
            top = _hash(seed, _TAG_PROJ, rows, cols) >> np.uint64(63)
            self.R = 1 - 2 * top.astype(np.int64)  # (m, d_in) of +-1
            self.q = int(round(float(np.sqrt(dim))))
            self._Rf = self.R.astype(np.float64)

    def __call__(self, x_fp: np.ndarray) -> np.ndarray:
        """int64 (n, d_in) -> int64 (n, d)."""
        x_fp = np.asarray(x_fp, dtype=np.int64)
        if self.identity:
            return x_fp
        # Each output is a +-1 sum of d_in integers below 2**20: exact in float64.
        if x_fp.size and int(np.abs(x_fp).max()) * self.d_in >= _EXACT:
            raise InvalidInput("vectors too large for an exact projection; ingest L2-normalised embeddings")
        y = (x_fp.astype(np.float64) @ self._Rf.T).astype(np.int64)
        return np.floor_divide(y, self.q)


# ----------------------------------------------------------------------------------------------
# Sources of records


@dataclass
class Block:
    """A slice of the records. rows: store handles; ids: object array of str; idh: uint64
    id_hash64(ids); x: integer (b, d) working-space vectors (int64, or int32 from a source that
    keeps them compact). xf, optional: the same values as float64 (exact), so that a source which
    has them anyway spares every pass a conversion."""

    rows: np.ndarray
    ids: np.ndarray
    idh: np.ndarray
    x: np.ndarray
    xf: np.ndarray | None = None


def _xf(blk: Block) -> np.ndarray:
    return blk.xf if blk.xf is not None else blk.x.astype(np.float64)


class Source(Protocol):
    """The records, any number of times, in any order and any blocking (the state does not
    depend on either). `vectors()` gives the same records' vectors alone, as float64 (b, d)
    arrays of the exact integers: what a Lloyd pass reads, so a source can skip the ids."""

    n: int

    def blocks(self) -> Iterator[Block]: ...

    def vectors(self) -> Iterator[np.ndarray]: ...


class ArraySource:
    """All records in memory, served in blocks (tests, eval, benchmarks)."""

    def __init__(
        self,
        ids: Sequence[str],
        x: np.ndarray,
        idh: np.ndarray | None = None,
        block_size: int = 4096,
        cache_float: bool = True,
    ):
        self.ids = np.empty(len(ids), dtype=object)
        self.ids[:] = list(ids)
        self.x = np.ascontiguousarray(x, dtype=np.int64)
        if self.x.ndim != 2 or self.x.shape[0] != len(self.ids):
            raise InvalidInput(f"x must be (n, d) with n = {len(self.ids)} ids; got shape {self.x.shape}")
        if len(set(self.ids.tolist())) != len(self.ids):
            raise InvalidInput("record ids must be unique; remove the duplicates")
        self.idh = id_hash64(self.ids.tolist()) if idh is None else np.asarray(idh, dtype=np.uint64)
        self.block_size = max(1, int(block_size))
        self.n = len(self.ids)
        # Every pass of a fit multiplies these vectors in float64; converting once saves a copy
        # per block per pass at the price of a second copy of the matrix.
        self.xf = self.x.astype(np.float64) if cache_float else None

    def blocks(self) -> Iterator[Block]:
        for lo in range(0, self.n, self.block_size):
            hi = min(lo + self.block_size, self.n)
            xf = None if self.xf is None else self.xf[lo:hi]
            yield Block(np.arange(lo, hi, dtype=np.int64), self.ids[lo:hi], self.idh[lo:hi], self.x[lo:hi], xf)

    def vectors(self) -> Iterator[np.ndarray]:
        return block_vectors(self.blocks())

    def without(self, ids) -> ArraySource:
        drop = set(ids)
        keep = np.fromiter((rid not in drop for rid in self.ids), dtype=bool, count=self.n)
        return ArraySource(self.ids[keep].tolist(), self.x[keep], self.idh[keep], self.block_size, self.xf is not None)


# ----------------------------------------------------------------------------------------------
# Lattice


def _theta(params: Params, t: int, d: int) -> np.ndarray:
    """Integer phase of iteration t (1-based), in [0, E)^d."""
    i = np.arange(d, dtype=np.uint64)
    return (_hash(params.seed, _TAG_THETA, t, i) % np.uint64(params.E)).astype(np.int64)


def _quantize(S: np.ndarray, N: np.ndarray, theta: np.ndarray, E: int, prev: np.ndarray) -> np.ndarray:
    """Round each mean S/N to the lattice theta + E*Z^d (half up); N == 0 keeps prev.

    S (k, d) int64, N (k,) int64, theta (d,), prev (k, d) -> (k, d) int64.
    """
    N2 = N[:, None]
    safe = np.maximum(N2, 1)
    q = np.floor_divide(2 * (S - safe * theta) + safe * E, 2 * safe * E)
    return np.where(N2 > 0, theta + E * q, prev)


def _check_bounds(max_abs: int, E: int, d: int) -> None:
    # A centroid stays within max_abs + E of the origin per coordinate, so this bounds every
    # squared distance and every dot product: all are exact integers in float64.
    if d * (2 * max_abs + E) ** 2 >= _EXACT:
        raise InvalidInput(
            f"vectors too large for exact fixed-point arithmetic (largest |coordinate| "
            f"{max_abs / SCALE:.3g}); ingest L2-normalised embeddings or use a smaller eps"
        )


def _scores(xf: np.ndarray, Cf: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """|c|^2 - 2 x.c, (b, k) float64 of exact integers: the squared distance minus |x|^2."""
    s = xf @ Cf.T
    s *= -2.0
    s += c2
    return s


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row, ties to the lower index, and the exact squared distance.

    x (b, d) int64, centroids (k, d) int64 -> labels (b,) int64, d2 (b,) int64.
    """
    x = np.asarray(x, dtype=np.int64)
    C = np.asarray(centroids, dtype=np.int64)
    if len(C) == 0:
        raise InvalidInput("no centroids to assign to; fit on at least one record first")
    max_abs = max(int(np.abs(x).max(initial=0)), int(np.abs(C).max(initial=0)))
    if x.shape[1] * (2 * max_abs) ** 2 >= _EXACT:
        raise InvalidInput("vectors too large for exact squared distances; ingest L2-normalised embeddings")
    xf = x.astype(np.float64)
    Cf = C.astype(np.float64)
    s = _scores(xf, Cf, np.einsum("ij,ij->i", Cf, Cf))
    labels = np.argmin(s, axis=1) if len(x) else np.zeros(0, dtype=np.int64)
    d2 = np.einsum("ij,ij->i", xf, xf) + s[np.arange(len(x)), labels]
    return labels.astype(np.int64), d2.astype(np.int64)


def route(centroids: np.ndarray, clusters: Sequence[int], q: np.ndarray) -> int | None:
    """The routing rule, shared by ask, eval and the server: of `clusters` (the non-empty ones),
    the one whose final centroid is nearest the working-space query q (int64 (d,)) by exact
    squared distance, ties to the lower cluster index; None when there is no cluster.

    centroids: the final centroids (k_eff, d) int64, indexed by cluster."""
    order = sorted(int(j) for j in clusters)
    if not order:
        return None
    labels, _ = assign(np.asarray(q, dtype=np.int64)[None, :], np.asarray(centroids, dtype=np.int64)[order])
    return order[int(labels[0])]


# ----------------------------------------------------------------------------------------------
# State


def _needed(route_size: int | None, final_counts: np.ndarray) -> list[int]:
    """Ranked candidates each cluster must hold for its example and its route to be known."""
    return [min(route_size or 1, int(c)) for c in final_counts]


def _pack_ids(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    raw = [s.encode("utf-8") for s in ids]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in raw], dtype=np.int64)
    return np.frombuffer(b"".join(raw), dtype=np.uint8).copy(), offsets


def _unpack_ids(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = data.tobytes()
    return [raw[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]


@dataclass(eq=False)
class State:
    params: Params
    d_in: int
    d: int
    n: int
    k_eff: int
    init_ids: list[str]
    centroids: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    final_counts: np.ndarray
    candidates: list[list[str]]
    cand_dists: list[list[int]]
    _derived: dict = field(default_factory=dict, repr=False)

    @property
    def examples(self) -> list[tuple[int, str]]:
        """(cluster, id) of each cluster's record nearest its final centroid, in cluster order."""
        return [(j, self.candidates[j][0]) for j in range(self.k_eff) if self.final_counts[j] > 0]

    @property
    def routes(self) -> list[tuple[int, list[str]]]:
        """(cluster, ids nearest first) of each non-empty cluster: its min(route_size, members)
        members nearest its final centroid, ranked by (squared distance, id). [] for a fit made
        before routes existed."""
        m = self.params.route_size
        if m is None:
            return []
        return [
            (j, self.candidates[j][: min(m, int(self.final_counts[j]))])
            for j in range(self.k_eff)
            if self.final_counts[j] > 0
        ]

    @classmethod
    def empty(cls, params: Params, d_in: int) -> State:
        d = params.working_dim(d_in)
        T = params.max_iter
        return cls(
            params=params,
            d_in=d_in,
            d=d,
            n=0,
            k_eff=0,
            init_ids=[],
            centroids=np.zeros((T + 1, 0, d), dtype=np.int64),
            sums=np.zeros((T, 0, d), dtype=np.int64),
            counts=np.zeros((T, 0), dtype=np.int64),
            final_counts=np.zeros(0, dtype=np.int64),
            candidates=[],
            cand_dists=[],
        )

    # Derived arrays for the certificate's hot path, computed once per state.
    def _cache(self):
        if not self._derived:
            Cf = self.centroids.astype(np.float64)
            self._derived["Cf"] = Cf
            self._derived["c2"] = np.einsum("tkd,tkd->tk", Cf, Cf)
            self._derived["theta"] = np.stack(
                [_theta(self.params, t, self.d) for t in range(1, self.params.max_iter + 1)]
            ).reshape(self.params.max_iter, self.d)
        return self._derived["Cf"], self._derived["c2"], self._derived["theta"]

    def _params_key(self) -> tuple:
        p = self.params
        return (p.k, p.E, p.dim, p.seed, p.max_iter, p.route_size)

    def state_digest(self) -> str:
        """sha256 hex over the canonical O(T*k*d) state: what decides later behaviour."""
        h = hashlib.sha256(b"erase-state/1\0")
        k, E, dim, seed, T, route_size = self._params_key()
        head = [k, E, -1 if dim is None else dim, seed, T, self.d_in, self.d, self.n, self.k_eff]
        if route_size is not None:  # a fit from before routes keeps the digest it was written with
            head.append(route_size)
        h.update(np.asarray(head, dtype="<i8").tobytes())
        for name in ("centroids", "sums", "counts", "final_counts"):
            arr = np.ascontiguousarray(getattr(self, name), dtype="<i8")
            h.update(name.encode() + b"\0" + np.asarray(arr.shape, dtype="<i8").tobytes())
            h.update(arr.tobytes())
        lists = [("init", self.init_ids), ("examples", [f"{j}:{i}" for j, i in self.examples])]
        if route_size is not None:
            lists.append(("routes", [f"{j}:{i}" for j, route in self.routes for i in route]))
        for label, ids in lists:
            data, offsets = _pack_ids(ids)
            h.update(label.encode() + b"\0" + offsets.astype("<i8").tobytes() + data.tobytes())
        return h.hexdigest()

    def differences(self, other: State) -> list[str]:
        """Human-readable differences in everything that determines behaviour; [] iff equal.

        Candidate lists are a replacement cache: one side's list must be a prefix of the other's.
        """
        out: list[str] = []
        if self._params_key() != other._params_key():
            out.append(f"params {self._params_key()} != {other._params_key()}")
        for name in ("d_in", "d", "n", "k_eff"):
            if getattr(self, name) != getattr(other, name):
                out.append(f"{name} {getattr(self, name)} != {getattr(other, name)}")
        if self.init_ids != other.init_ids:
            out.append(f"initial centres {self.init_ids} != {other.init_ids}")
        for name in ("centroids", "sums", "counts", "final_counts"):
            a, b = getattr(self, name), getattr(other, name)
            if a.shape != b.shape:
                out.append(f"{name} shape {a.shape} != {b.shape}")
            elif not np.array_equal(a, b):
                where = np.argwhere(a != b)[0].tolist()
                out.append(f"{name} differ first at index {where}")
        if self.examples != other.examples:
            out.append(f"examples {self.examples} != {other.examples}")
        if self.routes != other.routes:
            out.append(f"routes {self.routes} != {other.routes}")
        if len(self.candidates) == len(other.candidates):
            for j, (a, b) in enumerate(zip(self.candidates, other.candidates)):
                da, db = self.cand_dists[j], other.cand_dists[j]
                m = min(len(a), len(b))
                if a[:m] != b[:m] or da[:m] != db[:m] or len(a) != len(da) or len(b) != len(db):
                    out.append(f"candidates of cluster {j}: {list(zip(a, da))} vs {list(zip(b, db))}")
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        p = self.params
        init_data, init_off = _pack_ids(self.init_ids)
        flat = [i for c in self.candidates for i in c]
        cand_data, cand_off = _pack_ids(flat)
        return {
            "params_int": np.asarray(
                [p.k, -1 if p.dim is None else p.dim, p.seed, p.max_iter]
                + ([] if p.route_size is None else [p.route_size]),
                dtype=np.int64,
            ),
            "params_eps": np.asarray([p.eps], dtype=np.float64),
            "shape": np.asarray([self.d_in, self.d, self.n, self.k_eff], dtype=np.int64),
            "init_ids_utf8": init_data,
            "init_ids_off": init_off,
            "centroids": self.centroids,
            "sums": self.sums,
            "counts": self.counts,
            "final_counts": self.final_counts,
            "cand_ids_utf8": cand_data,
            "cand_ids_off": cand_off,
            "cand_len": np.asarray([len(c) for c in self.candidates], dtype=np.int64),
            "cand_dists": np.asarray([x for c in self.cand_dists for x in c], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict) -> State:
        def bad(why: str) -> StoreDamaged:
            return StoreDamaged(f"the fitted state is damaged ({why}); run 'erase fit' to rebuild it")

        def get(name: str, dtype, ndim: int) -> np.ndarray:
            if name not in arrays:
                raise bad(f"missing array {name!r}")
            arr = np.asarray(arrays[name])
            if arr.dtype != np.dtype(dtype) or arr.ndim != ndim:
                raise bad(f"array {name!r} has dtype {arr.dtype} and {arr.ndim} dimensions")
            return arr

        pi = get("params_int", np.int64, 1)
        pe = get("params_eps", np.float64, 1)
        shape = get("shape", np.int64, 1)
        # Four integers: a fit from before routes; five: the route size follows.
        if len(pi) not in (4, 5) or len(pe) != 1 or len(shape) != 4:
            raise bad("parameter arrays have the wrong length")
        k, dim, seed, T = (int(v) for v in pi[:4])
        route_size = int(pi[4]) if len(pi) == 5 else None
        d_in, d, n, k_eff = (int(v) for v in shape)
        params = Params(
            k=k, eps=float(pe[0]), dim=None if dim == -1 else dim, seed=seed, max_iter=T, route_size=route_size
        )
        try:
            params.validate(d_in)
        except InvalidParameter as exc:
            raise bad(f"stored parameters are invalid: {exc}") from None
        if d != params.working_dim(d_in) or n < 0 or not 0 <= k_eff <= min(k, n) or (n > 0) != (k_eff > 0):
            raise bad("inconsistent sizes")
        centroids = get("centroids", np.int64, 3)
        sums = get("sums", np.int64, 3)
        counts = get("counts", np.int64, 2)
        final_counts = get("final_counts", np.int64, 1)
        if (
            centroids.shape != (T + 1, k_eff, d)
            or sums.shape != (T, k_eff, d)
            or counts.shape != (T, k_eff)
            or final_counts.shape != (k_eff,)
        ):
            raise bad("array shapes do not match the parameters")
        if (counts < 0).any() or (final_counts < 0).any() or (counts.sum(axis=1) != n).any() or final_counts.sum() != n:
            raise bad("cluster counts do not add up to the number of records")
        cand_len = get("cand_len", np.int64, 1)
        cand_dists = get("cand_dists", np.int64, 1)
        if len(cand_len) != k_eff or (cand_len < 0).any() or (cand_len > params.n_candidates).any():
            raise bad("candidate list lengths are wrong")
        try:
            init_ids = _unpack_ids(get("init_ids_utf8", np.uint8, 1), get("init_ids_off", np.int64, 1))
            flat = _unpack_ids(get("cand_ids_utf8", np.uint8, 1), get("cand_ids_off", np.int64, 1))
        except (UnicodeDecodeError, IndexError, TypeError) as exc:
            raise bad(f"ids cannot be decoded: {exc}") from None
        if len(init_ids) != k_eff or len(flat) != int(cand_len.sum()) or len(cand_dists) != len(flat):
            raise bad("id lists have the wrong length")
        ends = np.cumsum(cand_len).tolist()
        starts = [0] + ends[:-1]
        candidates = [flat[a:b] for a, b in zip(starts, ends)]
        dists = [cand_dists[a:b].tolist() for a, b in zip(starts, ends)]
        need = _needed(route_size, final_counts)
        if any(len(candidates[j]) < need[j] for j in range(k_eff)):
            raise bad("a non-empty cluster has fewer ranked members than its example and route need")
        return cls(
            params,
            d_in,
            d,
            n,
            k_eff,
            init_ids,
            centroids.copy(),
            sums.copy(),
            counts.copy(),
            final_counts.copy(),
            candidates,
            dists,
        )


# ----------------------------------------------------------------------------------------------
# Fitting: exponential-race k-means++, quantized Lloyd, final pass


def _neg_log_u(idh: np.ndarray, mix: np.uint64 | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-ln U for U = a / 2**54, a = 2*(splitmix64(idh ^ mix) >> 11) + 1; returns (-ln U, a).

    Computed without cancellation near U = 1 (log1p of the exact complement), so the float key is
    accurate to a few ulp and the near-tie window is safe.
    """
    m = splitmix64(idh ^ mix) >> np.uint64(11)
    a = (m << np.uint64(1)) | np.uint64(1)  # odd, < 2**54
    high = m >= np.uint64(1 << 52)
    out = np.empty(len(a), dtype=np.float64)
    lo = ~high
    out[lo] = -np.log(a[lo].astype(np.float64) / _TWO54)
    comp = (np.uint64(_TWO54) - a[high]).astype(np.float64)  # exact: below 2**53
    out[high] = -np.log1p(-comp / _TWO54)
    return out, a


def _exact_key(a: int, w: int) -> decimal.Decimal:
    return _DECIMAL.divide(-_DECIMAL.ln(_DECIMAL.divide(decimal.Decimal(a), decimal.Decimal(_TWO54))), w)


class _RaceCandidate(NamedTuple):
    """A record whose float race key is within _RACE_GAP of the round's minimum."""

    key: float  # -ln(U) / weight, accurate to a few ulp
    a: int  # the odd integer numerator of U = a / 2**54 (for the exact key)
    weight: int  # exact squared distance to the nearest centre (1 in round 0)
    id: str
    x: np.ndarray  # the record's working-space vector, an int64 copy


# ---- Passes over parts of the records
#
# Every pass of a fit is a kernel over one *part* of the records (a sequence of Blocks) whose
# result combines with the other parts' in any order to the same bits: cluster sums and counts
# are exact int64, ranked candidates are the top M by (distance, id), and the race keeps every
# candidate within the near-tie window of the global minimum. A local fit has one part (the whole
# source); a distributed fit (distributed.py) runs the same kernels on a cluster's workers, one
# task per part, and combines on the client with the same functions.


@dataclass
class RaceMemo:
    """What a part remembers between race rounds, per record in the part's order: its exact
    squared distance to the nearest centre chosen so far (int64) and its |x|^2 (float64, exact).
    Indexed by position, not by block: a source may block its records differently from one
    round to the next (the store's source streams chunks, then serves them from memory)."""

    mind: np.ndarray
    x2: np.ndarray


class RacePartial(NamedTuple):
    """One part's share of a race round."""

    n: int  # records seen
    max_abs: int  # largest |coordinate| (first round only, else 0)
    live: bool  # some record has a positive weight
    best: float  # the smallest float key (inf when none is live)
    cands: list[_RaceCandidate]  # every record with key <= best * (1 + _RACE_GAP)


def race_part(
    blocks: Iterable[Block], memo: RaceMemo | None, pending: np.ndarray, r: int, mix: np.uint64 | np.ndarray
) -> tuple[RacePartial, RaceMemo]:
    """One race round over one part: fold the `pending` centres (p, d) into the part's distances,
    then draw every record's key. `memo` None starts the part's race (its first round).

    Returns the partial and the new memo (the given one is not changed, so a task that runs twice
    gives the same answer)."""
    first = memo is None
    mind_out: list[np.ndarray] = []
    x2_out: list[np.ndarray] = []
    Pf = pending.astype(np.float64)
    p2 = np.einsum("ij,ij->i", Pf, Pf)
    best = float("inf")
    cands: list[_RaceCandidate] = []
    n = max_abs = 0
    live_any = False
    for blk in blocks:
        b = len(blk.ids)
        xf = _xf(blk)
        if first:
            if b:
                max_abs = max(max_abs, int(np.abs(blk.x).max()))
            x2 = np.einsum("ij,ij->i", xf, xf)
            mind = np.full(b, np.iinfo(np.int64).max, dtype=np.int64)
        else:
            assert memo is not None
            x2, mind = memo.x2[n : n + b], memo.mind[n : n + b]
            if len(mind) != b:
                raise ValueError(f"part yielded more than the {len(memo.mind)} records of the previous round")
        n += b
        if len(pending) and b:
            dist = (_scores(xf, Pf, p2) + x2[:, None]).min(axis=1).astype(np.int64)
            mind = np.minimum(mind, dist)
        mind_out.append(mind)
        x2_out.append(x2)
        if b == 0:
            continue
        w = np.ones(b, dtype=np.int64) if r == 0 else mind
        live = w > 0
        if not live.any():
            continue
        live_any = True
        nl, a = _neg_log_u(blk.idh, mix)
        key = np.full(b, np.inf)
        key[live] = nl[live] / w[live].astype(np.float64)
        kmin = float(key.min())
        if kmin > best * (1 + _RACE_GAP):
            continue
        best = min(best, kmin)
        limit = best * (1 + _RACE_GAP)
        cands = [c for c in cands if c.key <= limit]
        for j in np.flatnonzero(key <= limit):
            cands.append(
                _RaceCandidate(float(key[j]), int(a[j]), int(w[j]), str(blk.ids[j]), blk.x[j].astype(np.int64))
            )
    if memo is not None and len(memo.mind) != n:
        raise ValueError(f"part yielded {n} records, {len(memo.mind)} in the previous round")
    if not mind_out:
        return RacePartial(n, max_abs, live_any, best, cands), RaceMemo(np.empty(0, np.int64), np.empty(0))
    return RacePartial(n, max_abs, live_any, best, cands), RaceMemo(np.concatenate(mind_out), np.concatenate(x2_out))


def race_winner(partials: Sequence[RacePartial]) -> _RaceCandidate | None:
    """The round's winner over all parts, decided exactly; None when no record has weight left.

    Why this equals one pass over all records: each part returned every key within the window of
    its own minimum, which is at least the global minimum, so every key within the window of the
    global minimum is among the candidates; the float keys are accurate to a few ulp, so the true
    minimum is one of them, and the exact comparison (ties by id) picks it whatever the order."""
    if not any(p.live for p in partials):
        return None
    best = min(p.best for p in partials)
    limit = best * (1 + _RACE_GAP)
    cands = [c for p in partials for c in p.cands if c.key <= limit]
    if len(cands) == 1:
        return cands[0]
    return min(cands, key=lambda c: (_exact_key(c.a, c.weight), c.id))


def block_vectors(blocks: Iterable[Block]) -> Iterator[np.ndarray]:
    """The blocks' vectors alone, as float64 (b, d) arrays of the exact integers."""
    for blk in blocks:
        yield _xf(blk)


def lloyd_part(vectors: Iterable[np.ndarray], C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One part's cluster sums (k, d) and counts (k,), int64, for centroids C (k, d) int64, over
    the part's vectors (float64 arrays of exact integers: a Lloyd pass needs no ids): exact
    integers, so the parts' results add up in any order to the same bits."""
    k = len(C)
    Cf = C.astype(np.float64)
    c2 = np.einsum("ij,ij->i", Cf, Cf)
    S = np.zeros(C.shape, dtype=np.int64)
    N = np.zeros(k, dtype=np.int64)
    for xf in vectors:
        if len(xf) == 0:
            continue
        labels = np.argmin(_scores(xf, Cf, c2), axis=1)
        bs, bn = _cluster_sums(labels, xf, k)
        S += bs
        N += bn
    return S, N


Ranked = list[list[tuple[int, str]]]  # per cluster, (squared distance, id) nearest first


def final_part(
    blocks: Iterable[Block], C: np.ndarray, M: int, only: set[int] | None = None
) -> tuple[np.ndarray, Ranked]:
    """One part's final counts (k,) and top-M (distance, id) per cluster (only the clusters in
    `only` if given) for the final centroids C (k, d)."""
    k = len(C)
    Cf = C.astype(np.float64)
    c2 = np.einsum("ij,ij->i", Cf, Cf)
    counts = np.zeros(k, dtype=np.int64)
    cands: Ranked = [[] for _ in range(k)]
    for blk in blocks:
        b = len(blk.ids)
        if b == 0:
            continue
        xf = _xf(blk)
        s = _scores(xf, Cf, c2)
        labels = np.argmin(s, axis=1)
        d2 = (s[np.arange(b), labels] + np.einsum("ij,ij->i", xf, xf)).astype(np.int64)
        counts += np.bincount(labels, minlength=k)
        order = np.lexsort((d2, labels))
        sl, sd = labels[order], d2[order]
        bounds = np.searchsorted(sl, np.arange(k + 1))
        for j in range(k):
            lo, hi = bounds[j], bounds[j + 1]
            if lo == hi or (only is not None and j not in only):
                continue
            seg = order[lo:hi]
            _merge(cands, j, sd[lo:hi], blk.ids[seg], M)
    return counts, cands


def final_combine(partials: Sequence[tuple[np.ndarray, Ranked]], k: int, M: int) -> tuple[np.ndarray, Ranked]:
    """The parts' final counts added and their ranked lists merged: _merge keeps the global top M
    by (distance, id) whatever the order it is fed in, so this equals one pass over all parts."""
    counts = np.zeros(k, dtype=np.int64)
    cands: Ranked = [[] for _ in range(k)]
    for part_counts, part_cands in partials:
        counts += part_counts
        for j, ranked in enumerate(part_cands):
            if ranked:
                ids = np.empty(len(ranked), dtype=object)
                ids[:] = [i for _, i in ranked]
                _merge(cands, j, np.asarray([dv for dv, _ in ranked], dtype=np.int64), ids, M)
    return counts, cands


class Runner(Protocol):
    """Runs the passes of a fit over the records, part by part, and returns each part's result."""

    n: int

    def race(self, r: int, mix: np.uint64 | np.ndarray, pending: np.ndarray, start: bool) -> list[RacePartial]: ...

    def lloyd(self, C: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def final(self, C: np.ndarray, M: int, only: set[int] | None = None) -> list[tuple[np.ndarray, Ranked]]: ...


class LocalRunner:
    """The records of one Source as a single part, in this process."""

    def __init__(self, source: Source):
        self.source = source
        self.n = source.n
        self._memo: RaceMemo | None = None

    def race(self, r: int, mix: np.uint64 | np.ndarray, pending: np.ndarray, start: bool) -> list[RacePartial]:
        partial, self._memo = race_part(self.source.blocks(), None if start else self._memo, pending, r, mix)
        return [partial]

    def lloyd(self, C: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [lloyd_part(self.source.vectors(), C)]

    def final(self, C: np.ndarray, M: int, only: set[int] | None = None) -> list[tuple[np.ndarray, Ranked]]:
        return [final_part(self.source.blocks(), C, M, only)]


def _runner(source: Source | Runner) -> Runner:
    return cast(Runner, source) if hasattr(source, "race") else LocalRunner(cast(Source, source))


def _race(
    runner: Runner, params: Params, d: int, kept_ids: list[str], kept: np.ndarray, progress: Progress | None
) -> tuple[list[str], np.ndarray]:
    """Continue the k-means++ race after the kept winners; returns (winner ids, (k_eff, d) centres)."""
    winners = list(kept_ids)
    centres = [row for row in kept]
    pending = np.asarray(centres, dtype=np.int64).reshape(-1, d)  # centres not yet folded into the parts
    for r in range(len(winners), params.k):
        start = r == len(kept_ids)
        partials = runner.race(r, _hash(params.seed, _TAG_RACE, r), pending, start)
        seen = sum(p.n for p in partials)
        if seen != runner.n:
            raise ValueError(f"source yielded {seen} records but reports n = {runner.n}")
        if start:
            _check_bounds(max(p.max_abs for p in partials), params.E, d)
        win = race_winner(partials)
        if win is None:
            break
        winners.append(win.id)
        centres.append(win.x)
        pending = win.x[None, :]
        if progress:
            progress("k-means++", r + 1, params.k)
    return winners, np.asarray(centres, dtype=np.int64).reshape(len(winners), d)


def _cluster_sums(labels: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums (k, d) int64 and counts (k,) int64 of the rows of x (b, d), integers
    (int64, int32) or float64 holding exact integers."""
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    sums = np.zeros((k, x.shape[1]), dtype=np.int64)
    if x.dtype.kind == "f":
        # Float64 sums of integers are exact while every partial sum stays below 2**53: rows of
        # at most 2**26 in magnitude (_check_bounds guarantees less) in slices of 2**20 rows.
        for lo in range(0, len(x), _SUM_ROWS):
            part, lab = x[lo : lo + _SUM_ROWS], labels[lo : lo + _SUM_ROWS]
            for j in np.flatnonzero(np.bincount(lab, minlength=k)).tolist():
                sums[j] += part[lab == j].sum(axis=0).astype(np.int64)
        return sums, counts
    # Masked row sums beat a one-hot matmul here and do not depend on BLAS threading.
    for j in np.flatnonzero(counts).tolist():
        sums[j] = x[labels == j].sum(axis=0, dtype=np.int64)
    return sums, counts


def _lloyd(
    runner: Runner,
    params: Params,
    centroids: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    t0: int,
    progress: Progress | None,
) -> None:
    """Run iterations t0..T in place: centroids[t-1] -> sums[t-1], counts[t-1], centroids[t]."""
    T = params.max_iter
    for t in range(t0, T + 1):
        S = np.zeros_like(sums[t - 1])
        N = np.zeros_like(counts[t - 1])
        for part_S, part_N in runner.lloyd(centroids[t - 1]):
            S += part_S
            N += part_N
        sums[t - 1] = S
        counts[t - 1] = N
        centroids[t] = _quantize(S, N, _theta(params, t, centroids.shape[2]), params.E, centroids[t - 1])
        if progress:
            progress("lloyd", t, T)


def _merge(cands: Ranked, j: int, dists: np.ndarray, ids: np.ndarray, M: int) -> None:
    """Merge a sorted-by-distance block segment into cluster j's top-M list, ranked by (dist, id)."""
    cur = cands[j]
    if len(dists) > M:
        # Keep every member tied with the M-th distance: the id decides among them.
        dists = dists[: np.searchsorted(dists, dists[M - 1], side="right")]
    if len(cur) >= M:
        cut = np.searchsorted(dists, cur[-1][0], side="right")
        dists = dists[:cut]
    if len(dists) == 0:
        return
    merged = cur + [(int(dv), str(iv)) for dv, iv in zip(dists.tolist(), ids[: len(dists)])]
    merged.sort()
    cands[j] = merged[:M]


def _final_pass(runner: Runner, C: np.ndarray, M: int, only: set[int] | None = None) -> tuple[np.ndarray, Ranked]:
    """Final counts (k,) and top-M candidates per cluster (only for clusters in `only` if given)."""
    return final_combine(runner.final(C, M, only), len(C), M)


def _finish(
    runner: Runner,
    params: Params,
    d_in: int,
    d: int,
    init_ids: list[str],
    centroids: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    n: int,
    progress: Progress | None,
) -> State:
    final_counts, cands = _final_pass(runner, centroids[-1], params.n_candidates)
    if progress:
        progress("examples", 1, 1)
    return State(
        params,
        d_in,
        d,
        n,
        len(init_ids),
        list(init_ids),
        centroids,
        sums,
        counts,
        final_counts,
        [[i for _, i in c] for c in cands],
        [[dv for dv, _ in c] for c in cands],
    )


def _fit_from_race(
    runner: Runner, params: Params, d_in: int, kept_ids: list[str], kept: np.ndarray, progress: Progress | None
) -> State:
    d = params.working_dim(d_in)
    if runner.n == 0:
        return State.empty(params, d_in)
    init_ids, C0 = _race(runner, params, d, kept_ids, kept, progress)
    T, k = params.max_iter, len(init_ids)
    centroids = np.zeros((T + 1, k, d), dtype=np.int64)
    centroids[0] = C0
    sums = np.zeros((T, k, d), dtype=np.int64)
    counts = np.zeros((T, k), dtype=np.int64)
    _lloyd(runner, params, centroids, sums, counts, 1, progress)
    return _finish(runner, params, d_in, d, init_ids, centroids, sums, counts, runner.n, progress)


def fit(source: Source | Runner, params: Params, d_in: int, progress: Progress | None = None) -> State:
    """Quantized k-means on the records of `source` (working-space int64 vectors), or on those a
    Runner's parts hold (a distributed fit: the same state, bit for bit).

    The result depends on the set of (id, vector) pairs, the parameters and the seed only.
    """
    params.validate(d_in)
    d = params.working_dim(d_in)
    return _fit_from_race(_runner(source), params, d_in, [], np.zeros((0, d), dtype=np.int64), progress)


# ----------------------------------------------------------------------------------------------
# Certificate and forgetting


@dataclass
class Certificate:
    crossings: list[tuple[int, int]]
    first_round: int | None
    first_iter: int | None

    @property
    def action_needed(self) -> str:
        return "none" if not self.crossings else "refit"


def _check_batch(state: State, ids: Sequence[str], x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    if x.ndim != 2 or x.shape != (len(ids), state.d):
        raise InvalidInput(f"batch vectors must be ({len(ids)}, {state.d}); got {x.shape}")
    if len(set(ids)) != len(ids):
        raise InvalidInput("the batch names an id twice; pass each id once")
    if len(ids) > state.n:
        raise InvalidInput(f"the batch has {len(ids)} records but the fit covers only {state.n}")
    return x


def _trace(state: State, x: np.ndarray):
    """Walk the stored trajectory with the batch removed.

    Returns (first_iter or None, changed clusters at it, dS (T, k, d), dN (T, k)) where dS/dN hold
    the batch's contributions for every iteration before the first crossing.
    """
    T, k = state.params.max_iter, state.k_eff
    Cf, c2, theta = state._cache()
    xf = x.astype(np.float64)
    dS = np.zeros((T, k, state.d), dtype=np.int64)
    dN = np.zeros((T, k), dtype=np.int64)
    E = state.params.E
    for t in range(1, T + 1):
        labels = np.argmin(_scores(xf, Cf[t - 1], c2[t - 1]), axis=1)
        bs, bn = _cluster_sums(labels, x, k)
        dS[t - 1], dN[t - 1] = bs, bn
        touched = np.flatnonzero(bn)
        new = _quantize(
            state.sums[t - 1, touched] - bs[touched],
            state.counts[t - 1, touched] - bn[touched],
            theta[t - 1],
            E,
            state.centroids[t - 1, touched],
        )
        changed = (new != state.centroids[t, touched]).any(axis=1)
        if changed.any():
            return t, touched[changed].tolist(), dS, dN
    return None, [], dS, dN


def certify(state: State, ids: Sequence[str], x: np.ndarray) -> Certificate:
    """Would removing the batch change the fitted state's trajectory? O(b*T*k*d), pure.

    x: (b, d) working-space vectors of the batch; every id must be a member of the fitted set.
    """
    x = _check_batch(state, ids, x)
    if len(ids) == 0:
        return Certificate([], None, None)
    batch = set(ids)
    rounds = [r for r, rid in enumerate(state.init_ids) if rid in batch]
    if rounds:
        # The race is redone from the first removed winner; later iterations are moot.
        return Certificate([(0, r) for r in rounds], rounds[0], None)
    t, changed, _, _ = _trace(state, x)
    if t is None:
        return Certificate([], None, None)
    return Certificate([(t, j) for j in changed], None, t)


def forget(
    state: State, ids: Sequence[str], x: np.ndarray, survivors: Source | Runner, progress: Progress | None = None
) -> tuple[State, Certificate]:
    """The state fit(D \\ X) would give, from the state of fit(D). The input state is untouched.

    survivors: the fitted set minus the batch (a Source, or a Runner over its parts), read only
    when a refit or a rescan is needed.
    """
    survivors = _runner(survivors)
    x = _check_batch(state, ids, x)
    p = state.params
    T, k, d = p.max_iter, state.k_eff, state.d
    if len(ids) == 0:
        return _copy(state), Certificate([], None, None)
    n_new = state.n - len(ids)
    if survivors.n != n_new:
        raise ValueError(f"survivors hold {survivors.n} records, expected {n_new}")
    batch = set(ids)
    rounds = [r for r, rid in enumerate(state.init_ids) if rid in batch]
    if rounds:
        # A k-means++ winner is in the batch. Why exact: a record's race key depends only on
        # (seed, round, id) and its distance to the earlier winners, and a round's winner is the
        # minimum key. Rounds before r had winners outside the batch, so removing the batch (which
        # only removes losing keys there) leaves those winners, hence their centres, unchanged.
        # From round r on, the race and all of Lloyd are rerun on the survivors: what fit does.
        r = rounds[0]
        cert = Certificate([(0, j) for j in rounds], r, None)
        new = _fit_from_race(survivors, p, state.d_in, state.init_ids[:r], state.centroids[0, :r], progress)
        return new, cert

    t0, changed, dS, dN = _trace(state, x)
    if t0 is not None:
        # The race is untouched (no winner removed) but centroid t0 moves. Why exact: for t < t0
        # every C[t] is the same, so every survivor gets the same label, and the survivors' sums
        # and counts are the stored integers minus the batch's contributions (integer
        # subtraction, no rounding); re-quantizing them gives the stored C[t], as _trace checked.
        # From iteration t0 on, Lloyd runs on the survivors from those exact statistics.
        cert = Certificate([(t0, j) for j in changed], None, t0)
        centroids = state.centroids.copy()
        sums = state.sums - dS
        counts = state.counts - dN
        _lloyd(survivors, p, centroids, sums, counts, t0, progress)
        new = _finish(survivors, p, state.d_in, d, state.init_ids, centroids, sums, counts, n_new, progress)
        return new, cert

    # No crossing. Why exact: the race and every C[t] are unchanged (checked above), so fit on
    # the survivors follows the same trajectory; its sums and counts are the stored ones minus the
    # batch's (exact integers), and the final assignment to C[T] is unchanged for every survivor,
    # so the final counts drop exactly the batch's labels. A candidate list is sorted by
    # (distance, id) over the cluster's members: removing ids keeps the rest in order and still
    # the nearest survivors, so its first min(route_size, members) entries (the route; its head is
    # the cluster's example) are the ones fit would pick, as long as that many remain. A list
    # left shorter than that is rescanned over the survivors (a full top list, as fit keeps).
    cert = Certificate([], None, None)
    labels, _ = assign(x, state.centroids[T])
    final_counts = state.final_counts - np.bincount(labels, minlength=k)
    if (final_counts < 0).any() or (state.counts - dN < 0).any():
        raise InvalidInput("the batch holds vectors that the fit does not cover; pass members of the fitted set")
    candidates = [[i for i in c if i not in batch] for c in state.candidates]
    cand_dists = [[dv for i, dv in zip(c, dl) if i not in batch] for c, dl in zip(state.candidates, state.cand_dists)]
    need = _needed(p.route_size, final_counts)
    needy = {j for j in range(k) if len(candidates[j]) < need[j]}
    if needy:
        _, fresh = _final_pass(survivors, state.centroids[T], p.n_candidates, needy)
        for j in needy:
            candidates[j] = [i for _, i in fresh[j]]
            cand_dists[j] = [dv for dv, _ in fresh[j]]
    new = State(
        p,
        state.d_in,
        d,
        n_new,
        k,
        list(state.init_ids),
        state.centroids.copy(),
        state.sums - dS,
        state.counts - dN,
        final_counts,
        candidates,
        cand_dists,
    )
    return new, cert


def _copy(state: State) -> State:
    return State(
        state.params,
        state.d_in,
        state.d,
        state.n,
        state.k_eff,
        list(state.init_ids),
        state.centroids.copy(),
        state.sums.copy(),
        state.counts.copy(),
        state.final_counts.copy(),
        [list(c) for c in state.candidates],
        [list(c) for c in state.cand_dists],
    )


def crossing_rate(state: State, sample: Block) -> float:
    """Share of the sample whose deletion on its own would change the trajectory.

    A k-means++ winner always counts as crossing. Vectorised over the sample: O(s*T*k*d).
    """
    s = len(sample.ids)
    if s == 0 or state.k_eff == 0:
        return 0.0
    x = np.asarray(sample.x, dtype=np.int64)
    Cf, c2, theta = state._cache()
    xf = x.astype(np.float64)
    winners = set(state.init_ids)
    crossed = np.fromiter((str(i) in winners for i in sample.ids), dtype=bool, count=s)
    E = state.params.E
    for t in range(1, state.params.max_iter + 1):
        labels = np.argmin(_scores(xf, Cf[t - 1], c2[t - 1]), axis=1)
        S = state.sums[t - 1, labels] - x
        N = state.counts[t - 1, labels] - 1
        new = _quantize(S, N, theta[t - 1], E, state.centroids[t - 1, labels])
        crossed |= (new != state.centroids[t, labels]).any(axis=1)
    return float(crossed.mean())
