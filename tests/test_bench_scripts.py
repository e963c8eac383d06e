"""The benchmarks run end to end (tiny shapes, --smoke): the GPU one is ready for a lent device, `make bench`'s
engine table does not rot."""

import importlib.util
import os
import subprocess  # nosec B404  # runs the repository's own benchmark script
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


def smoke_run(script: str, *args: str, timeout: int = 600) -> str:
    """The standard output of `bench/<script> --smoke <args>`, which must exit 0."""
    out = subprocess.run(  # nosec B603  # this interpreter and a file of the repository, no shell
        [sys.executable, str(ROOT / "bench" / script), "--smoke", *args],
        capture_output=True, text=True, timeout=timeout, env=dict(os.environ, HF_HUB_OFFLINE="1"), check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_gpu_bench_smoke_run_prints_every_table():
    text = smoke_run("gpu_bench.py", "--rounds", "1", "--new-tokens", "3", "--batch", "2")
    assert "smoke run" in text and "tiny smoke-run shapes" in text
    for row in ("time to first token, batch 1", "decode tokens/s, batch 2", "% of the bound",
                "onnxruntime CPU fp32", "torch eager float32"):
        assert row in text, row


def test_engine_bench_smoke_run_prints_every_row_and_equal_tokens():
    text = smoke_run("bench_engine.py")
    assert "SMOKE RUN" in text and "Tokens identical to transformers in every round: yes" in text
    for row in ("decode tokens/s, batch 1", "time to first token, 2 requests", "bare pass of GeoVLM's products",
                "best read rate of each decode round", "% of its round's bound", "| batch 2 |", "cold load",
                "cold start to one answer", "anonymous memory after one ask"):
        assert row in text, row
    if importlib.util.find_spec("numba"):  # the compiled CPU step serves batch 1, and its kernel is measured
        assert "GeoVLM's batch-1 decode step: numba" in text and "the compiled step's numba kernel" in text


def test_kernel_bench_smoke_run_prints_every_kernel():
    text = smoke_run("bench_kernels.py", timeout=300)
    assert "SMOKE RUN" in text
    for row in ("read rate: torch.sum", "GeoVLM's kernel (", "MKL (torch.mv)",
                "OpenBLAS (numpy.dot)", "MLAS (onnxruntime"):
        assert row in text, row
    if importlib.util.find_spec("numba"):
        assert "numba (GeoVLM's compiled CPU step" in text


def test_threads_bench_smoke_run_prints_every_wait_policy(monkeypatch):
    text = smoke_run("bench_threads.py")
    assert "SMOKE RUN" in text and "| 0 busy processes | 1 busy process |" in text
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_threads

    for row in bench_threads.POLICIES:
        assert f"| {row} | " in text, row
    assert text.count(" tok/s |") == 2 * len(bench_threads.POLICIES)


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "rasters" / "cogeo.tif").exists(),
                    reason="needs the shared rasters (../shared/data/rasters)")
def test_int8_boxes_bench_smoke_run_trains_and_compares_both_encoders():
    text = smoke_run("bench_int8_boxes.py", timeout=300)
    assert "SMOKE RUN" in text and "trained 3 steps of 4" in text
    for row in ("features: per-token cosine worst / mean", "IoU with the marker", "answers token for token identical",
                "boxes that moved / largest corner shift", "steps where int8 picks fp32's token"):
        assert row in text, row
