"""Every test gets its own store directory and a clean ERASE_* environment."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    for var in (
        "ERASE_STORE",
        "ERASE_MODEL",
        "ERASE_EMBEDDER",
        "ERASE_LOCK_TIMEOUT",
        "ERASE_SECRET_FILE",
        "ERASE_REDACT_IDS",
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
