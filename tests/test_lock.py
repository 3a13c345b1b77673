import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from erase_cli import lock as lock_module
from erase_cli.errors import InvalidParameter, StoreDamaged, StoreLocked, StoreMissing
from erase_cli.lock import StoreLock

ROOT = Path(__file__).resolve().parents[1]
# Holds the lock in another process until its stdin closes.
HOLDER = """
import sys
from pathlib import Path
from erase_cli.lock import StoreLock
with StoreLock(Path(sys.argv[1]), shared=sys.argv[2] == "shared", timeout=5):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def lock_path(tmp_path):
    """A store directory's lock file, created the way it always is: by a first writer."""
    store = tmp_path / "store"
    store.mkdir()
    with StoreLock(store / "lock", shared=False, timeout=0):
        pass
    return store / "lock"


def hold_in_subprocess(path, kind):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )


def free(path, *, shared=False):
    """Whether a lock of that kind can be taken right now."""
    try:
        with StoreLock(path, shared=shared, timeout=0):
            return True
    except StoreLocked:
        return False


def test_exclusive_excludes_exclusive_within_one_process(lock_path):
    # flock belongs to the open file description: a second open in the same process conflicts.
    with StoreLock(lock_path, shared=False, timeout=0):
        assert not free(lock_path)
        assert not free(lock_path, shared=True)
    assert free(lock_path)


def test_lock_file_is_owner_only(lock_path):
    assert stat.S_IMODE(os.stat(lock_path).st_mode) & 0o077 == 0


def test_readers_never_create_the_lock_file(tmp_path):
    """A read-only command writes nothing, even in a directory that is no store."""
    with StoreLock(tmp_path / "lock", shared=True, timeout=0):
        pass
    assert not (tmp_path / "lock").exists()


@pytest.mark.parametrize("kind", ["directory", "symlink"])
def test_lock_that_is_no_regular_file_is_damage(lock_path, tmp_path, kind):
    lock_path.unlink()
    if kind == "directory":
        lock_path.mkdir()
    else:
        (tmp_path / "elsewhere").write_text("x")
        lock_path.symlink_to(tmp_path / "elsewhere")
    for shared in (True, False):
        with pytest.raises(StoreDamaged, match="not a regular file"):
            with StoreLock(lock_path, shared=shared, timeout=0):
                pass
    assert kind == "directory" or (tmp_path / "elsewhere").read_text() == "x"


def test_timeout_raises_store_locked_after_about_the_timeout(lock_path):
    messages = []
    with StoreLock(lock_path, shared=False, timeout=0):
        started = time.monotonic()
        with pytest.raises(StoreLocked) as caught:
            with StoreLock(lock_path, shared=False, timeout=0.3, on_wait=messages.append):
                pass
        waited = time.monotonic() - started
    assert 0.3 <= waited < 1.0
    assert caught.value.exit_code == 75
    assert str(lock_path.parent) in str(caught.value)
    assert "retry later or raise --lock-timeout" in str(caught.value)
    assert messages == [f"waiting for the lock on {lock_path.parent} (held by another erase command); up to 0.3 s"]


def test_zero_timeout_is_one_attempt_without_waiting_message(lock_path):
    messages = []
    with StoreLock(lock_path, shared=False, timeout=0):
        started = time.monotonic()
        with pytest.raises(StoreLocked):
            with StoreLock(lock_path, shared=True, timeout=0, on_wait=messages.append):
                pass
        assert time.monotonic() - started < 0.05
    assert messages == []


def test_shared_locks_coexist(lock_path):
    with StoreLock(lock_path, shared=True, timeout=0):
        with StoreLock(lock_path, shared=True, timeout=0):
            assert not free(lock_path)
        assert not free(lock_path)
    assert free(lock_path)


def test_waiter_gets_the_lock_when_the_holder_releases(lock_path):
    messages = []
    holding = threading.Event()
    release = threading.Event()

    def hold():
        with StoreLock(lock_path, shared=True, timeout=0):
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    timer = threading.Timer(0.2, release.set)
    timer.start()
    started = time.monotonic()
    with StoreLock(lock_path, shared=False, timeout=5, on_wait=messages.append):
        waited = time.monotonic() - started
    holder.join(5)
    assert 0.15 <= waited < 2
    assert len(messages) == 1 and "up to 5 s" in messages[0]


def test_released_on_exception(lock_path):
    with pytest.raises(KeyError):
        with StoreLock(lock_path, shared=False, timeout=0):
            raise KeyError("boom")
    assert free(lock_path)


def test_other_process_exclusive_blocks_and_shared_coexists(lock_path):
    def start(kind):
        proc = hold_in_subprocess(lock_path, kind)
        assert proc.stdout.readline() == "held\n"
        return proc

    def stop(proc):
        proc.stdin.close()
        assert proc.wait(5) == 0

    proc = start("exclusive")
    try:
        assert not free(lock_path)
        assert not free(lock_path, shared=True)
    finally:
        stop(proc)
    assert free(lock_path)

    proc = start("shared")
    try:
        assert free(lock_path, shared=True)
        assert not free(lock_path)
    finally:
        stop(proc)
    assert free(lock_path)


def test_killed_holder_releases_the_lock(lock_path):
    proc = hold_in_subprocess(lock_path, "exclusive")
    assert proc.stdout.readline() == "held\n"
    assert not free(lock_path)
    proc.kill()
    proc.wait(5)
    assert free(lock_path)


def test_missing_store_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(StoreMissing, match=f"store {missing} does not exist.*--store"):
        with StoreLock(missing / "lock", shared=True, timeout=0):
            pass
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreMissing, match="is not a directory"):
        with StoreLock(tmp_path / "file" / "lock", shared=False, timeout=0):
            pass


@pytest.mark.parametrize("timeout", [-1, float("nan")])
def test_invalid_timeout(lock_path, timeout):
    with pytest.raises(InvalidParameter, match="--lock-timeout"):
        StoreLock(lock_path, shared=False, timeout=timeout)


def read_only_open(real_open):
    """os.open as on a directory we may not write: creating or opening for writing is refused."""

    def fake(path, flags, *args):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    return fake


def test_read_only_store_still_locks_through_an_existing_lock_file(lock_path, monkeypatch):
    # Simulated: the tests may run as root, which ignores file modes.
    lock_path.touch()
    holder = StoreLock(lock_path, shared=False, timeout=0)
    monkeypatch.setattr(lock_module.os, "open", read_only_open(os.open))
    with StoreLock(lock_path, shared=True, timeout=0):
        monkeypatch.undo()
        assert not free(lock_path)
    monkeypatch.setattr(lock_module.os, "open", read_only_open(os.open))
    with holder:
        monkeypatch.undo()
        assert not free(lock_path, shared=True)


def test_read_only_store_without_lock_file(lock_path, monkeypatch):
    lock_path.unlink()
    monkeypatch.setattr(lock_module.os, "open", read_only_open(os.open))
    with StoreLock(lock_path, shared=True, timeout=0):
        assert not lock_path.exists()
    with pytest.raises(lock_module.StoreNotWritable, match="chmod u\\+rwx"):
        with StoreLock(lock_path, shared=False, timeout=0):
            pass
