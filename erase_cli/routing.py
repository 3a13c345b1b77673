"""Which prompt answers a question: the fit's global prompt, or the route of the cluster nearest
the question (issue 10). One place for ask, eval and the server, so they always agree.

The rule itself (`qkmeans.route`) is exact integer arithmetic on the fitted centroids; this module
turns a question into the working-space vector it needs (embedded by the store's embedder, or
given as a vector on a store ingested with --vector-field) and the answer into a `PromptChoice`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import qkmeans as qk
from .errors import InvalidInput, InvalidParameter
from .schema import Manifest

MODES = ("auto", "routed", "global")
VECTOR_EMBEDDER_PREFIX = "vectors:"  # the embedder name of a store ingested with --vector-field


@dataclass(frozen=True)
class PromptChoice:
    """The prompt one question is answered with."""

    mode: str  # "routed" or "global"
    route: int | None  # the cluster, for a routed answer
    examples: list[dict]  # in prompt order
    prompt_digest: str

    def to_json(self) -> dict:
        """The `erase` object of an answer (ask --json, and the server)."""
        return {"mode": self.mode, "route": self.route, "prompt_digest": self.prompt_digest}


def embeds_questions(embedder_name: str | None) -> bool:
    """Whether erase can embed a question for this store (not one ingested with --vector-field)."""
    return not (embedder_name or "").startswith(VECTOR_EMBEDDER_PREFIX)


def resolve_mode(mode: str, manifest: Manifest) -> str:
    """ "routed" or "global" for a requested mode. `auto` routes when the fit has routes and the
    store embeds its own questions; an explicit `routed` on a fit without routes is an error."""
    if mode not in MODES:
        raise InvalidParameter(f"--mode {mode!r} is not one of {', '.join(MODES)}; use auto")
    if mode == "global":
        return "global"
    if not manifest.routed:
        if mode == "routed":
            raise InvalidParameter(
                "this fit was made before routes existed and has none; "
                "run 'erase fit' to add them, or use --mode global"
            )
        return "global"
    if mode == "auto":
        return "routed" if embeds_questions(manifest.embedder) else "global"
    return "routed"


def route_vectors(
    centroids: np.ndarray, clusters: list[int], projector: qk.Projector, vectors: np.ndarray
) -> list[int | None]:
    """The route of each unit float32 vector (n, d_in), taken to the working space exactly as a
    stored record is (fixed point, then the fit's projection)."""
    working = projector(qk.to_fixed(np.asarray(vectors, dtype=np.float32)))
    return [qk.route(centroids, clusters, q) for q in working]


def global_choice(manifest: Manifest) -> PromptChoice:
    return PromptChoice("global", None, list(manifest.examples), manifest.prompt_digest)


class Router:
    """Routes questions with a manifest's final centroids. `embed` turns texts into unit float32
    vectors (the store's embedder, loaded by the caller once); it is needed only for questions
    that come without a vector."""

    def __init__(self, manifest: Manifest, d_in: int, embed: Callable[[str], np.ndarray] | None):
        self.manifest = manifest
        self.d_in = d_in
        self._embed = embed
        d = manifest.dim if manifest.dim is not None else d_in
        self.centroids = np.asarray(manifest.centroids, dtype=np.int64).reshape(manifest.k_eff, d)
        self.clusters = [int(r["cluster"]) for r in manifest.routes]
        self._projector = qk.Projector(d_in, manifest.dim, manifest.seed)

    def choose(self, text: str, vector: np.ndarray | None = None) -> PromptChoice:
        if vector is None:
            if self._embed is None:
                raise InvalidInput(
                    "this store was ingested with --vector-field, so erase cannot embed a question; "
                    "give the question's vector (--query-vector, or a 'vector' field in --from-file), "
                    "or use --mode global"
                )
            vector = self._embed(text)
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (self.d_in,):
            raise InvalidInput(
                f"the question's vector has {vector.size} dimensions but the store's have {self.d_in}; "
                "give a vector made like the ingested ones"
            )
        j = route_vectors(self.centroids, self.clusters, self._projector, vector[None, :])[0]
        route = None if j is None else self.manifest.route(j)
        if route is None:  # no non-empty cluster: the global prompt (zero-shot on an empty fit)
            return global_choice(self.manifest)
        return PromptChoice("routed", j, list(route["examples"]), route["prompt_digest"])


def question_embedder(name: str | None, device: str | None = None) -> Callable[[str], np.ndarray] | None:
    """text -> unit float32 vector with the store's embedder on `device` (auto, cpu, cuda), loaded
    on first use; None for a store ingested with --vector-field (its questions must come with
    vectors)."""
    from .embed import check_device, resolve_device

    if not embeds_questions(name):
        check_device(device)
        return None
    if check_device(device) == "cuda":
        resolve_device(device)  # no CUDA is an error now, before the model loads, not at the first question
    loaded: list = []

    def embed(text: str) -> np.ndarray:
        if not loaded:
            from .embed import load_embedder

            loaded.append(load_embedder(name, device))
        return next(iter(loaded[0].embed([text])))[0]

    return embed
