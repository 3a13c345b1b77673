"""The store's schema: typed, validated views of store.json (`StoreMeta`, its `FitMeta`) and of
manifest.json (`Manifest`). store.py reads every file through these parsers, so a value of the
wrong type, or a manifest of an unknown format, is reported as damage instead of failing later.

`to_json()` gives back exactly the keys that were read (unknown keys are kept as they are), so
store.json stays byte-compatible: the same store gives the same file, the same mac.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from .errors import StoreDamaged

STORE_FORMAT = "erase-store/2"
STORE_FORMAT_VERSION = 2
# Format 2 adds routes and the prompt format; a format-1 manifest (a fit from before routes) is
# still read, served with its global prompt, and verified by its own rules until the next fit.
MANIFEST_FORMAT = "erase-manifest/2"
MANIFEST_FORMAT_V1 = "erase-manifest/1"
PROMPT_FIELDS = ("instruction", "input_prefix", "output_prefix", "separator")
COUNTERS = (
    "forget_batches",
    "crossing_batches",
    "prompt_changes",
    "refits",
    "examples_replaced",
    "route_changes",  # routes whose prompt changed, summed over batches
    "route_change_batches",  # batches that changed at least one route
)


def _damaged(path: Path, what: str, fix: str = "restore the store from a backup") -> StoreDamaged:
    return StoreDamaged(f"damaged store: {path} {what}; {fix}")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- store.json


def _prompt_ok(value) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == set(PROMPT_FIELDS)
        and all(isinstance(value[name], str) for name in PROMPT_FIELDS)
    )


@dataclass(frozen=True)
class FitParams:
    k: int
    eps: float
    dim: int | None
    seed: int
    max_iter: int
    route_size: int | None = None  # None: a fit from before routes (the key is not written)

    def to_json(self) -> dict:
        out = {"k": self.k, "eps": self.eps, "dim": self.dim, "seed": self.seed, "max_iter": self.max_iter}
        if self.route_size is not None:
            out["route_size"] = self.route_size
        return out


@dataclass(frozen=True)
class FitMeta:
    """store.json's `fit`: the parameters, the slots the fit covers, whether records were
    appended since, and the crossing estimate `status` shows."""

    params: FitParams
    fit_rows: int
    stale: bool = False
    crossing_estimate: float | None = None
    # The prompt format the fit was made with (PROMPT_FIELDS); None before routes existed.
    prompt: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, raw, path: Path) -> FitMeta:
        if not isinstance(raw, dict):
            raise _damaged(path, "has a fit that is not an object")
        p = raw.get("params")
        if (
            not isinstance(p, dict)
            or not all(_int(p.get(n)) for n in ("k", "seed", "max_iter"))
            or not _num(p.get("eps"))
            or not (p.get("dim") is None or _int(p.get("dim")))
            or not (p.get("route_size") is None or _int(p.get("route_size")))
        ):
            raise _damaged(path, "has fit parameters that are not numbers")
        if raw.get("prompt") is not None and not _prompt_ok(raw["prompt"]):
            raise _damaged(path, "has a prompt format that is not four strings")
        if not _int(raw.get("fit_rows")) or raw["fit_rows"] < 0:
            raise _damaged(path, "has a fit without the number of rows it covers")
        estimate = raw.get("crossing_estimate")
        if estimate is not None and not _num(estimate):
            raise _damaged(path, "has a crossing estimate that is not a number")
        params = FitParams(
            k=p["k"], eps=p["eps"], dim=p["dim"], seed=p["seed"], max_iter=p["max_iter"], route_size=p.get("route_size")
        )
        known = ("params", "fit_rows", "stale", "crossing_estimate", "prompt")
        return cls(
            params=params,
            fit_rows=raw["fit_rows"],
            stale=bool(raw.get("stale")),
            crossing_estimate=estimate,
            prompt=raw.get("prompt"),
            extra={k: v for k, v in raw.items() if k not in known},
        )

    def to_json(self) -> dict:
        out = {
            **self.extra,
            "params": self.params.to_json(),
            "fit_rows": self.fit_rows,
            "stale": self.stale,
            "crossing_estimate": self.crossing_estimate,
        }
        if self.prompt is not None:
            out["prompt"] = dict(self.prompt)
        return out

    def with_(self, **changes) -> FitMeta:
        return replace(self, **changes)


# Keys store.json has only from some point on (a new store before its first commit, a format-1
# store before its upgrade): written only when they hold a value.
_OPTIONAL = ("n_records", "audit_head", "audit_keyed_from", "key", "mac")


@dataclass(frozen=True)
class StoreMeta:
    """store.json. `format`, `format_version`, `audit_head` and `mac` are written by
    Transaction.commit; everything else is the content a transaction stages with set_meta."""

    format: str
    format_version: int
    dim: int | None
    embedder: str | None
    chunk_rows: int
    n_slots: int
    n_forgotten: int
    fit: FitMeta | None
    counters: dict[str, int]
    checksums: dict[str, str]
    n_records: int | None = None
    audit_keyed_from: int | None = None
    audit_head: str | None = None
    key: dict | None = None
    mac: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def new(cls, dim: int, embedder: str, chunk_rows: int) -> StoreMeta:
        return cls(
            format=STORE_FORMAT,
            format_version=STORE_FORMAT_VERSION,
            dim=dim,
            embedder=embedder,
            chunk_rows=chunk_rows,
            n_slots=0,
            n_forgotten=0,
            fit=None,
            counters={name: 0 for name in COUNTERS},
            checksums={},
            audit_keyed_from=0,
        )

    @classmethod
    def parse(cls, raw, path: Path) -> StoreMeta:
        """store.json's decoded content, checked (its mac is checked before, on `raw`)."""
        if not isinstance(raw, dict) or not _int(raw.get("format_version")):
            raise _damaged(path, "is not an erase store file", "restore it from a backup")
        if not isinstance(raw.get("format"), str):
            raise _damaged(path, "names no store format")
        for name in ("n_slots", "n_forgotten", "chunk_rows"):
            if not _int(raw.get(name, 0)) or raw.get(name, 0) < 0:
                raise _damaged(path, f"has a {name} that is not a count")
        for name in ("n_records", "audit_keyed_from"):
            if raw.get(name) is not None and (not _int(raw[name]) or raw[name] < 0):
                raise _damaged(path, f"has a {name} that is not a count")
        if raw.get("dim") is not None and not _int(raw["dim"]):
            raise _damaged(path, "has a dimension that is not a number")
        if raw.get("embedder") is not None and not isinstance(raw["embedder"], str):
            raise _damaged(path, "has an embedder name that is not text")
        counters = raw.get("counters", {})
        if not isinstance(counters, dict) or not all(_int(v) for v in counters.values()):
            raise _damaged(path, "has counters that are not numbers")
        checksums = raw.get("checksums", {})
        if not isinstance(checksums, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in checksums.items()
        ):
            raise _damaged(path, "has checksums that are not text")
        if raw.get("key") is not None and not isinstance(raw["key"], dict):
            raise _damaged(path, "describes its key with something that is not an object")
        fit = raw.get("fit")
        known = (
            "format",
            "format_version",
            "dim",
            "embedder",
            "chunk_rows",
            "n_slots",
            "n_forgotten",
            "fit",
            "counters",
            "checksums",
        ) + _OPTIONAL
        return cls(
            format=raw["format"],
            format_version=raw["format_version"],
            dim=raw.get("dim"),
            embedder=raw.get("embedder"),
            chunk_rows=raw.get("chunk_rows", 0),
            n_slots=raw.get("n_slots", 0),
            n_forgotten=raw.get("n_forgotten", 0),
            fit=None if not fit else FitMeta.parse(fit, path),
            counters=dict(counters),
            checksums=dict(checksums),
            **{name: raw.get(name) for name in _OPTIONAL},
            extra={k: v for k, v in raw.items() if k not in known},
        )

    def to_json(self) -> dict:
        out = {
            **self.extra,
            "format": self.format,
            "format_version": self.format_version,
            "dim": self.dim,
            "embedder": self.embedder,
            "chunk_rows": self.chunk_rows,
            "n_slots": self.n_slots,
            "n_forgotten": self.n_forgotten,
            "fit": None if self.fit is None else self.fit.to_json(),
            "counters": dict(self.counters),
            "checksums": dict(self.checksums),
        }
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def with_(self, **changes) -> StoreMeta:
        return replace(self, **changes)

    def counted(self, **increments: int) -> StoreMeta:
        """These counters raised by the given amounts."""
        counters = dict(self.counters)
        for name, n in increments.items():
            counters[name] = counters.get(name, 0) + n
        return replace(self, counters=counters)

    @property
    def record_set(self) -> tuple[int, int]:
        """Changes whenever the set of records does: ingest only adds slots, forget only adds
        to the forgotten count; a fit or an upgrade leaves it alone."""
        return self.n_slots, self.n_forgotten


# --------------------------------------------------------------------------- manifest.json


@dataclass(frozen=True)
class Manifest:
    """SPEC 3's manifest. `to_bytes()` is canonical: sorted keys, no times or paths, so equal
    states give byte-identical manifests.

    Format 2 adds `route_size`, `prompt` (the format: PROMPT_FIELDS) and `routes`: one
    `{"cluster", "examples", "prompt_digest"}` per non-empty cluster, its examples in prompt order
    (the one nearest the centroid last, next to the question). Format 1 has none of them."""

    k: int
    k_eff: int
    eps: float
    dim: int | None
    seed: int
    max_iter: int
    n_records: int
    embedder: str | None
    examples: list[dict]
    centroids: list
    prompt_digest: str
    state_digest: str
    format: str = MANIFEST_FORMAT
    route_size: int | None = None
    prompt: dict | None = None
    routes: list[dict] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes, path: Path) -> Manifest:
        fix = "run 'erase fit' to rewrite it"
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise StoreDamaged(f"{path} is not valid JSON; {fix}") from None
        if not isinstance(raw, dict):
            raise _damaged(path, "is not a manifest", fix)
        fmt = raw.get("format")
        if fmt not in (MANIFEST_FORMAT, MANIFEST_FORMAT_V1):
            raise _damaged(path, f"has the unknown format {fmt!r} (this erase reads {MANIFEST_FORMAT})", fix)
        if (
            not all(_int(raw.get(n)) for n in ("k", "k_eff", "seed", "max_iter", "n_records"))
            or not _num(raw.get("eps"))
            or not (raw.get("dim") is None or _int(raw["dim"]))
            or not _examples_ok(raw.get("examples"))
            or not isinstance(raw.get("centroids"), list)
            or not isinstance(raw.get("prompt_digest"), str)
            or not isinstance(raw.get("state_digest"), str)
        ):
            raise _damaged(path, "is not a complete manifest", fix)
        if fmt == MANIFEST_FORMAT and (
            not _int(raw.get("route_size"))
            or not _prompt_ok(raw.get("prompt"))
            or not isinstance(raw.get("routes"), list)
            or not all(_route_ok(r) for r in raw["routes"])
        ):
            raise _damaged(path, "has incomplete routes or prompt format", fix)
        return cls(
            k=raw["k"],
            k_eff=raw["k_eff"],
            eps=raw["eps"],
            dim=raw["dim"],
            seed=raw["seed"],
            max_iter=raw["max_iter"],
            n_records=raw["n_records"],
            embedder=raw.get("embedder"),
            examples=raw["examples"],
            centroids=raw["centroids"],
            prompt_digest=raw["prompt_digest"],
            state_digest=raw["state_digest"],
            format=fmt,
            route_size=raw.get("route_size"),
            prompt=raw.get("prompt"),
            routes=raw.get("routes") or [],
        )

    @property
    def routed(self) -> bool:
        """Whether this fit has routes (format 2; a format-1 fit serves its global prompt)."""
        return self.format == MANIFEST_FORMAT

    def route(self, cluster: int) -> dict | None:
        return next((r for r in self.routes if r["cluster"] == cluster), None)

    @property
    def digests(self) -> set[str]:
        """Every prompt digest this fit can serve: the global prompt's and each route's."""
        return {self.prompt_digest} | {r["prompt_digest"] for r in self.routes}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "k": self.k,
            "k_eff": self.k_eff,
            "eps": self.eps,
            "dim": self.dim,
            "seed": self.seed,
            "max_iter": self.max_iter,
            "n_records": self.n_records,
            "embedder": self.embedder,
            "examples": self.examples,
            "centroids": self.centroids,
            "prompt_digest": self.prompt_digest,
            "state_digest": self.state_digest,
        }
        if self.routed:
            out.update(route_size=self.route_size, prompt=self.prompt, routes=self.routes)
        return out

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def _examples_ok(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(e, dict) and isinstance(e.get("input"), str) and isinstance(e.get("id"), str) for e in value
    )


def _route_ok(value) -> bool:
    return (
        isinstance(value, dict)
        and _int(value.get("cluster"))
        and _examples_ok(value.get("examples"))
        and isinstance(value.get("prompt_digest"), str)
    )
