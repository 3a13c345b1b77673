import subprocess
import sys

import numpy as np
import pytest

from erase_cli import embed
from erase_cli.embed import FakeEmbedder, load_embedder
from erase_cli.errors import InvalidInput, InvalidParameter, ModelInvalid, ModelMissing

TEXTS = [
    "where is my parcel",
    "please cancel order 123",
    "I forgot my password",
    "why was I charged twice?",
    "does the kettle have a warranty",
]


def collect(embedder, texts, batch_size):
    batches = list(embedder.embed(texts, batch_size=batch_size))
    return batches, np.concatenate(batches) if batches else np.empty((0, embedder.dim))


# ---- FakeEmbedder -------------------------------------------------------------------------------


def test_fake_is_deterministic_unit_float32_and_in_order():
    emb = FakeEmbedder(16)
    batches, x = collect(emb, TEXTS, batch_size=2)
    assert [b.shape for b in batches] == [(2, 16), (2, 16), (1, 16)]
    assert x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x.astype(np.float64), axis=1), 1.0, atol=1e-6)
    _, again = collect(FakeEmbedder(16), TEXTS[::-1], batch_size=64)
    np.testing.assert_array_equal(x, again[::-1])


def test_fake_distinguishes_texts_and_dimensions():
    _, x = collect(FakeEmbedder(8), TEXTS, batch_size=64)
    assert len({row.tobytes() for row in x}) == len(TEXTS)
    assert FakeEmbedder(8).name == "fake:8" and FakeEmbedder().dim == 16
    _, y = collect(FakeEmbedder(32), TEXTS[:1], batch_size=1)
    assert y.shape == (1, 32)


def test_fake_known_vector_is_stable_across_machines():
    # shake_256 and little-endian words fix the value everywhere; a change here changes stores.
    (v,) = next(FakeEmbedder(4).embed(["erase"]))
    raw = np.frombuffer(__import__("hashlib").shake_256(b"erase").digest(16), "<u4")
    expected = raw.astype(np.float64) - 2147483647.5
    np.testing.assert_array_equal(v, (expected / np.linalg.norm(expected)).astype(np.float32))


def test_empty_input_yields_nothing():
    assert list(FakeEmbedder().embed([])) == []


@pytest.mark.parametrize("bad", [0, -1])
def test_batch_size_must_be_positive(bad):
    with pytest.raises(InvalidParameter):
        list(FakeEmbedder().embed(TEXTS, batch_size=bad))


def test_load_embedder_fake_spec():
    emb = load_embedder("fake:24")
    assert isinstance(emb, FakeEmbedder) and emb.dim == 24
    for bad in ("fake:", "fake:0", "fake:x"):
        with pytest.raises(InvalidParameter):
            load_embedder(bad)


def test_unit_rows_rejects_zero_and_nonfinite():
    with pytest.raises(InvalidInput, match="#11"):
        embed._unit_rows(np.array([[1.0, 0.0], [0.0, 0.0]]), first_index=10)
    with pytest.raises(InvalidInput, match="#0"):
        embed._unit_rows(np.array([[np.nan, 1.0]]), first_index=0)


def test_unit_rows_rounds_once_from_float64():
    x = np.array([[3.0, 4.0], [1e-30, 0.0]])
    np.testing.assert_array_equal(embed._unit_rows(x, 0), np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32))


def test_import_does_not_load_torch():
    code = (
        "import sys, erase_cli.embed; "
        "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the real bundled model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return load_embedder(None)


@pytest.mark.integration
def test_bundled_model_is_384d_unit_norm(minilm):
    assert minilm.name == "all-MiniLM-L6-v2" and minilm.dim == 384
    batches, x = collect(minilm, TEXTS, batch_size=2)
    assert [b.shape for b in batches] == [(2, 384), (2, 384), (1, 384)]
    assert x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x.astype(np.float64), axis=1), 1.0, atol=1e-6)
    # Meaning, not only shape: a paraphrase is closer than an unrelated request.
    _, y = collect(minilm, ["where is my package?"], batch_size=1)
    assert float(x[0] @ y[0]) > float(x[2] @ y[0]) + 0.2


@pytest.mark.integration
def test_same_text_same_vector_across_batch_compositions(minilm):
    long_text = "my order has not arrived and " * 10
    mixes = [
        ([TEXTS[0]], 1),
        (TEXTS, 64),
        ([long_text, *TEXTS], 3),
        ([*TEXTS[::-1], long_text], 2),
    ]
    vectors = []
    for texts, batch_size in mixes:
        _, x = collect(minilm, texts, batch_size)
        vectors.append(x[texts.index(TEXTS[0])])
    for v in vectors[1:]:
        np.testing.assert_allclose(v, vectors[0], atol=1e-6, rtol=0)


@pytest.mark.integration
def test_bundled_aliases_and_unknown_names(tmp_path):
    assert load_embedder("sentence-transformers/all-MiniLM-L6-v2").dim == 384
    with pytest.raises(ModelMissing, match="--embedder"):
        load_embedder("no-such-org/no-such-model-xyz")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    with pytest.raises((ModelInvalid, ModelMissing)):
        load_embedder(str(tmp_path / "junk"))
