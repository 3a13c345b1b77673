"""Every test gets its own store directory and a clean ERASE_* environment; the small text store
and fake model that the API and server tests answer from."""

import json

import pytest
from helpers import FIT

from erase_cli import service


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    for var in (
        "ERASE_STORE",
        "ERASE_MODEL",
        "ERASE_EMBEDDER",
        "ERASE_LOCK_TIMEOUT",
        "ERASE_SECRET_FILE",
        "ERASE_REDACT_IDS",
        "ERASE_DASK_SCHEDULER",
        "ERASE_API_KEY",
        "ERASE_ADMIN_KEY",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ERASE_STORE", str(tmp_path / "erase-store"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # The store forces umask 077 for writers; restore the test process's umask afterwards.
    import os

    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.fixture
def text_store(tmp_path):
    """40 records whose questions erase embeds itself (the deterministic fake:16 embedder), so
    auto mode routes; each input holds a unique marker to look for in the model's prefix."""
    root = tmp_path / "store"
    path = tmp_path / "text.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            f.write(json.dumps({"id": f"t{i:02d}", "input": f"text marker TXT{i:02d}X", "target": f"L{i % 3}"}) + "\n")
    service.ingest(root, str(path), embedder="fake:16")
    service.fit(root, **FIT)
    return root


@pytest.fixture
def model(tmp_path) -> str:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF")
    return str(path)
