"""--device auto|cpu|cuda for the embedder (ingest, eval, routed ask): cuda where torch sees no
CUDA device is a one-line error (exit 1, kind device_unavailable) that changes nothing; it is never
a silent fall-back to the CPU. This machine has no GPU, so these tests check exactly that; on a
machine with one they are skipped (scripts/gpu-check.sh measures the GPU path there)."""

from __future__ import annotations

import subprocess

import pytest
from helpers import ROOT, erase, make_records, refused, write_jsonl

from erase_cli import embed
from erase_cli.errors import DeviceUnavailable, InvalidParameter

torch = pytest.importorskip("torch")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def test_device_values_are_checked_without_torch():
    assert embed.check_device(None) == "auto"
    assert [embed.check_device(d) for d in ("auto", "cpu", "cuda")] == ["auto", "cpu", "cuda"]
    with pytest.raises(InvalidParameter, match="not one of auto, cpu, cuda"):
        embed.check_device("gpu")
    assert embed.resolve_device("cpu") == "cpu"


@no_cuda
def test_cuda_without_cuda_is_an_error_and_auto_takes_the_cpu():
    assert embed.resolve_device("auto") == "cpu"
    with pytest.raises(DeviceUnavailable, match="--device cpu"):
        embed.resolve_device("cuda")
    with pytest.raises(DeviceUnavailable):
        embed.load_embedder("fake:8", "cuda")  # even the fake refuses a device it could not have
    assert embed.load_embedder("fake:8", "cpu").dim == 8


@no_cuda
def test_ingest_on_cuda_without_cuda_is_one_line_and_writes_nothing(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", make_records(5))
    store = tmp_path / "s"
    msg = refused(
        ["ingest", str(data), "--embedder", "fake:8", "--device", "cuda", "--store", str(store)],
        None,
        kind="device_unavailable",
        mentions=["--device cuda", "--device cpu"],
    )
    assert "CPU-only" in msg or "no usable GPU" in msg
    assert not (store / "store.json").exists()
    refused(
        ["ingest", str(data), "--device", "tpu", "--store", str(store)],
        None,
        kind="invalid_parameter",
        mentions=["auto"],
    )
    r = erase("ingest", str(data), "--embedder", "fake:8", "--device", "cpu", "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr


@no_cuda
def test_eval_on_cuda_without_cuda_is_one_line(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", make_records(6, prefix="tr"))
    test = write_jsonl(tmp_path / "test.jsonl", make_records(2, prefix="te"))
    refused(
        ["eval", str(train), str(test), "--embedder", "fake:8", "--device", "cuda", "--method", "erase"],
        None,
        kind="device_unavailable",
        mentions=["--device cpu"],
    )


@no_cuda
@pytest.mark.parametrize(
    "command",
    [["ask", "where is my parcel"], ["serve", "--port", "0"]],
    ids=["routed ask, before any question", "serve, before listening"],
)
def test_routed_answers_on_cuda_without_cuda_are_one_line(tmp_path, command):
    data = write_jsonl(tmp_path / "d.jsonl", make_records(12))
    store = tmp_path / "s"
    assert erase("ingest", str(data), "--embedder", "fake:16", "--store", str(store)).returncode == 0
    assert erase("fit", "-k", "2", "--store", str(store)).returncode == 0
    refused(
        [*command, "--mode", "routed", "--device", "cuda", "--store", str(store)],
        store,
        kind="device_unavailable",
        mentions=["--device cpu"],
    )


def test_gpu_check_script_is_there_and_valid_bash():
    script = ROOT / "scripts" / "gpu-check.sh"
    assert script.is_file()
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "GGML_CUDA=on" in script.read_text() and "--n-gpu-layers" in script.read_text()
