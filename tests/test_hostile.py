"""Hostile and broken input (issue 4): each case exits with the right code, prints ONE line on
stderr naming the problem and the fix (and a JSON error object with --json), no traceback, and
leaves the store byte for byte as it was. Damage is reported, never answered with wrong results.

Most cases run the real console script; the ones that need a fault injected into the process (a
full disk, a read-only store while running as root) run the CLI in-process with typer's runner.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from helpers import ERASE, build_store, clean_env, erase, make_records, refused, snapshot, write_jsonl
from typer.testing import CliRunner

from erase_cli import store as store_mod
from erase_cli.cli import app
from erase_cli.records import MAX_ID_BYTES, MAX_JSON_DEPTH, MAX_LINE_BYTES


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    records = make_records(60, seed=7)
    store = tmp / "template"
    fit = build_store(store, records, tmp)
    return store, records, fit


@pytest.fixture
def store(template, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(template[0], dst)
    return dst


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    data[i + 1] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# --------------------------------------------------------------------------- damaged store


# Which command reads which array: forget looks ids up (ids) and reads the vectors (emb); verify
# streams ids, idh and emb and reads the examples' data for the manifest.
@pytest.mark.parametrize(
    "damage,array,command",
    [
        (_flip, "ids", "forget"),
        (_flip, "data", "verify"),
        (_flip, "idh", "verify"),
        (_flip, "emb", "verify"),
        (_truncate, "ids", "verify"),
        (_truncate, "emb", "forget"),
    ],
    ids=["flipped-ids", "flipped-data", "flipped-idh", "flipped-emb", "truncated-ids", "truncated-emb"],
)
def test_damaged_chunk_is_reported_not_answered(store, template, damage, array, command):
    chunk = store / "records.zarr" / array / "c" / ("0/0" if array == "emb" else "0")
    damage(chunk)
    args = ["verify"] if command == "verify" else ["forget", template[1][5].id]
    refused([*args, "--store", str(store)], store, kind="store_damaged", mentions=[array, "damaged", "backup"])


@pytest.mark.parametrize("damage", ["edited", "truncated"])
def test_damaged_manifest(store, damage):
    path = store / "manifest.json"
    if damage == "edited":
        text = path.read_text()
        # A plausible hand edit: a demonstration's target changed, the JSON still valid.
        assert "TGT" in text
        path.write_text(text.replace("TGT", "XYZ", 1))
    else:
        _truncate(path)
    refused(["status", "--store", str(store)], store, kind="store_damaged", mentions=["manifest.json", "checksum"])
    if damage == "edited":
        refused(
            ["forget", "rec-000001-ID", "--store", str(store)], store, kind="store_damaged", mentions=["manifest.json"]
        )


def test_manifest_of_unknown_format_is_damage(store):
    """A manifest that checksums and macs fine but names a format this erase does not read (a
    newer erase wrote it, or a bug did) is damage, never read as if it were erase-manifest/1."""
    with store_mod.open_store(store, write=True) as st:
        manifest = orjson.loads(st.manifest_bytes())
        manifest["format"] = "erase-manifest/99"
        with st.transaction("fit") as tx:
            tx.write_file(store_mod.MANIFEST, orjson.dumps(manifest))
            tx.set_meta(st.meta)
            tx.commit({})
    refused(
        ["status", "--store", str(store)],
        store,
        kind="store_damaged",
        mentions=["manifest.json", "erase-manifest/99", "erase fit"],
    )


@pytest.mark.parametrize("name", ["fit/state.npz", "index", "forgotten.json"])
def test_damaged_checksummed_file(store, name):
    if name == "forgotten.json":  # exists after a first forget
        assert erase("forget", "rec-000002-ID", "--store", str(store)).returncode == 0
    if name == "index":  # the shard that the forgotten id is looked up in
        from erase_cli.qkmeans import id_hash64
        from erase_cli.store import index_rel, shard_of

        name = index_rel(int(shard_of(id_hash64(["rec-000001-ID"]))[0]))
    path = store / name
    _flip(path, at=0.9)
    refused(["forget", "rec-000001-ID", "--store", str(store)], store, kind="store_damaged", mentions=[name])


def test_newer_store_format_is_refused(store):
    meta = orjson.loads((store / "store.json").read_bytes())
    meta["format_version"] = 99
    (store / "store.json").write_bytes(orjson.dumps(meta))
    for args in (["status"], ["forget", "rec-000001-ID"], ["fit", "--dim", "8"]):
        refused([*args, "--store", str(store)], store, kind="store_format_newer", mentions=["99", "upgrade erase"])


def test_store_path_that_is_a_file(tmp_path, template):
    path = tmp_path / "not-a-dir"
    path.write_bytes(b"hello")
    data = write_jsonl(tmp_path / "d.jsonl", template[1][:3])
    for args in (["status"], ["ingest", str(data), "--vector-field", "vec"]):
        refused([*args, "--store", str(path)], None, kind="store_missing", mentions=["is a file", "--store"])
    assert path.read_bytes() == b"hello"


def test_missing_store_is_not_created_by_readers(tmp_path):
    missing = tmp_path / "nowhere"
    for args in (["status"], ["forget", "x"]):
        refused([*args, "--store", str(missing)], None, kind="store_missing", mentions=["erase ingest"])
    assert not missing.exists()


# --------------------------------------------------------------------------- faults in-process


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_read_only_store_refuses_writers(store, monkeypatch):
    # Tests run as root, which ignores permission bits, so chmod alone cannot make the store
    # read-only here: report "not writable" the way the kernel would to an ordinary user.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real_access(p, mode, **kw))
    before = snapshot(store)
    result = _invoke(["forget", "rec-000001-ID", "--store", str(store), "--json"])
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "not writable" in line and "permissions" in line
    assert json.loads(result.stdout)["error"]["kind"] == "store_not_writable"
    # Readers still work on a read-only store.
    assert _invoke(["status", "--store", str(store)]).exit_code == 0
    assert snapshot(store) == before


def _fail_staged_writes(monkeypatch, exc: OSError, names: tuple[str, ...] | None = None) -> None:
    """Make writing a staged whole file (under journal/files/) fail the way the kernel would."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if "journal" in self.parts and (names is None or self.name in names):
            raise exc
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_eacces_while_staging_is_a_clean_error(store, monkeypatch):
    _fail_staged_writes(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    before = snapshot(store)
    result = _invoke(["forget", "rec-000001-ID", "--store", str(store)])
    assert result.exit_code == 1
    assert "permission" in _one_error_line(result).lower()
    assert snapshot(store) == before


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["journal", "staged-file", "staged-chunk"])
def test_disk_full_during_forget_leaves_store_unchanged(store, monkeypatch, where):
    if where == "journal":
        monkeypatch.setattr(store_mod, "atomic_write", _enospc)  # the commit point itself
    elif where == "staged-file":
        _fail_staged_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"), ("store.json",))
    else:
        # A chunk file: a forget patches the purged chunks itself; zarr writes the others.
        import zarr.storage

        monkeypatch.setattr(zarr.storage.LocalStore, "set", lambda *a, **k: _enospc_async())
        real = Path.write_bytes

        def write_bytes(self, data):
            if "journal" in self.parts and "records.zarr" in self.parts:
                _enospc()
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", write_bytes)
    before = snapshot(store)
    result = _invoke(["forget", "rec-000001-ID", "--store", str(store), "--json"])
    assert result.exit_code == 1, result.output
    line = _one_error_line(result)
    assert "no space" in line.lower()
    assert json.loads(result.stdout)["error"]["kind"] == "disk_full"
    assert snapshot(store) == before
    assert not (store / "journal").exists()


async def _enospc_async():
    _enospc()


# --------------------------------------------------------------------------- id files


@pytest.mark.parametrize("case", ["nul", "huge", "non-utf8"])
def test_hostile_id_files(store, tmp_path, case):
    f = tmp_path / "ids.txt"
    mentions = {"nul": ["NUL"], "huge": [str(MAX_ID_BYTES)], "non-utf8": ["UTF-8"]}[case]
    if case == "nul":
        f.write_bytes(b"rec-000001-ID\nbad\x00id\n")
    elif case == "huge":
        with open(f, "wb") as out:  # 10 MB on one line
            out.write(b"rec-000001-ID\n" + b"x" * (10 * 2**20) + b"\n")
    else:
        f.write_bytes(b"rec-000001-ID\n\xff\xfe\xc3(\n")
    msg = refused(
        ["forget", "--from-file", str(f), "--store", str(store)], store, kind="invalid_input", mentions=mentions
    )
    assert ":2:" in msg  # names the line
    assert len(msg) < 400  # the 10 MB id is not echoed back
    # (an id file with no id at all is an empty batch, no error: tests/test_cron.py)


# --------------------------------------------------------------------------- JSONL input


def test_100mb_jsonl_line_is_refused_in_bounded_memory(store, tmp_path):
    big = tmp_path / "big.jsonl"
    head = b'{"id": "big-1", "target": "t", "vec": [1, 0], "input": "'
    with open(big, "wb") as f:  # sparse: the 100 MB of the line cost no disk
        f.write(head)
        f.seek(100 * 2**20)
        f.write(b'"}\n')
    small = tmp_path / "small.jsonl"
    small.write_bytes(b'{"id": "s-1", "target": "t", "vec": [1, 0], "input": "\x00"}\n{\n')

    before = snapshot(store)
    r = erase("ingest", str(big), "--vector-field", "vec", "--append", "--store", str(store))
    assert r.returncode == 1
    assert f"longer than {MAX_LINE_BYTES // 2**20} MiB" in r.stderr and ":1:" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert snapshot(store) == before

    # Peak memory of the refusing ingest, read by a wrapper from its only child's rusage.
    probe = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], capture_output=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )

    def peak_kib(path: Path) -> int:
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                probe,
                ERASE,
                "ingest",
                str(path),
                "--vector-field",
                "vec",
                "--append",
                "--store",
                str(store),
            ],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=120,
        )
        return int(r.stdout.strip())

    base, peak = peak_kib(small), peak_kib(big)
    # The reader holds at most one line's worth (16 MiB) plus slack, never the 100 MB line.
    assert peak - base < 48 * 1024, (base, peak)


def _ingest_line(store: Path, tmp_path: Path, line: bytes, mentions: list[str]) -> str:
    f = tmp_path / "bad.jsonl"
    good = (
        b'{"id": "ok-1", "input": "fine", "target": "t", "vec": [0.5, 0.5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]}\n'
    )
    f.write_bytes(good + line + b"\n")
    msg = refused(
        ["ingest", str(f), "--vector-field", "vec", "--append", "--store", str(store)],
        store,
        kind="invalid_input",
        mentions=mentions,
    )
    assert ":2:" in msg
    return msg


def test_deeply_nested_json(store, tmp_path):
    depth = 100_000
    line = b'{"id": "deep", "input": "x", "target": "t", "vec": [1], "extra": ' + b"[" * depth + b"]" * depth + b"}"
    _ingest_line(store, tmp_path, line, ["nested", str(MAX_JSON_DEPTH)])
    shallow_but_over = (
        b'{"id": "deep", "input": "x", "target": "t", "vec": [1], "extra": ' + b"[" * 80 + b"]" * 80 + b"}"
    )
    _ingest_line(store, tmp_path, shallow_but_over, ["nested"])


@pytest.mark.parametrize(
    "token,word", [(b"NaN", "NaN"), (b"Infinity", "Infinity"), (b"-Infinity", "Infinity"), (b"1e999", "finite")]
)
def test_non_finite_vectors(store, tmp_path, token, word):
    vec = b"[" + b", ".join([b"0.1"] * 15 + [token]) + b"]"
    line = b'{"id": "nf-1", "input": "x", "target": "t", "vec": ' + vec + b"}"
    _ingest_line(store, tmp_path, line, [word])


def test_zero_vector_and_wrong_dimension(store, tmp_path):
    _ingest_line(store, tmp_path, b'{"id": "z", "input": "x", "target": "t", "vec": [0, 0, 0]}', ["zeros"])
