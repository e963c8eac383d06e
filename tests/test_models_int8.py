"""Int8 encoder: onnxruntime's dynamic quantisation behind a parity gate against the fp32 export, the
`--encoder-precision` / `--int8` options and what a second start reads from the hashes store."""

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ms.demo_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def fp32(demo):
    from geovlm.models.pipeline import ensure_encoder

    return ensure_encoder(demo, model=ms.hf_model(str(demo)))


@pytest.fixture()
def folder(demo, fp32, tmp_path):
    """A copy of the demo checkpoint with its fp32 export and nothing else generated."""
    out = tmp_path / "ckpt"
    shutil.copytree(demo, out, ignore=shutil.ignore_patterns("*-int8.onnx", "geovlm-hashes.json", "*.tmp-*"))
    return out


def test_feature_agreement_measures_direction_and_size():
    from geovlm.models.encoder_quantise import feature_agreement

    ref = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    same = feature_agreement(ref, ref.copy())
    assert same.min_cosine == pytest.approx(1.0) and same.relative_error == 0.0 and not same.failures()
    doubled = feature_agreement(ref, 2 * ref)  # same direction, twice the size: cosine cannot see it
    assert doubled.min_cosine == pytest.approx(1.0) and doubled.relative_error == pytest.approx(1.0)
    assert doubled.failures() == ["relative error 1.000 > 0.1"]
    turned = ref.copy()
    turned[1, 3] = -turned[1, 3]  # one token pointing the other way
    assert feature_agreement(ref, turned).min_cosine == pytest.approx(-1.0)
    assert "per-token cosine -1.0000 < 0.99" in feature_agreement(ref, turned).failures()[0]
    with pytest.raises(ValueError, match="cannot be compared"):
        feature_agreement(ref, ref[:1])


def test_the_gate_keeps_a_good_quantisation(fp32, demo, tmp_path):
    import onnx

    from geovlm.models.encoder_export import torch_image_features
    from geovlm.models.encoder_quantise import encoder_pixels, quantise_encoder
    from geovlm.models.encoder_runtime import OnnxEncoder

    report = quantise_encoder(fp32, tmp_path / "int8.onnx")
    assert report.images == 4 and report.agreement.min_cosine >= 0.99 and report.agreement.relative_error <= 0.1
    int8 = OnnxEncoder(report.path, providers=["CPUExecutionProvider"])
    meta = int8.metadata
    assert meta["geovlm.dtype"] == "int8"
    assert json.loads(meta["geovlm.int8_gate"])["min_cosine"] == pytest.approx(report.agreement.min_cosine, abs=1e-6)
    reference = OnnxEncoder(fp32)
    assert int8.source_hash == reference.source_hash and int8.file_hash != reference.file_hash
    ops = {node.op_type for node in onnx.load(str(report.path)).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear", "Conv"} <= ops and "ConvInteger" not in ops  # patches fp32
    # on other real imagery than the gate's (tiles of cogeo.tif), against torch: still close, not identical
    pixels = encoder_pixels(int8, ms.cogeo_tiles(3))
    ref = torch_image_features(ms.hf_model(str(demo)), torch.from_numpy(pixels)).numpy()
    got = int8.run(pixels)
    cosine = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cosine.min() >= 0.99 and 1e-5 < np.abs(got - ref).max()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_only_the_int8_session_keeps_a_prepacked_copy_of_the_weights(fp32, tmp_path):
    from geovlm.models.encoder_quantise import quantise_encoder
    from geovlm.models.encoder_runtime import OnnxEncoder

    options = OnnxEncoder(fp32).session.get_session_options()
    assert options.get_session_config_entry("session.disable_prepacking") == "1"  # fp32: weights stay mapped
    int8 = OnnxEncoder(quantise_encoder(fp32, tmp_path / "int8.onnx").path).session.get_session_options()
    with pytest.raises(Exception, match="disable_prepacking"):  # int8 keeps onnxruntime's default: pre-packed
        int8.get_session_config_entry("session.disable_prepacking")


def test_the_gate_refuses_a_bad_quantisation(fp32, tmp_path, monkeypatch):
    from geovlm.models import encoder_quantise

    with pytest.raises(encoder_quantise.QuantisationError, match=r"^int8 encoder refused: relative error .* > 0\.0 "):
        encoder_quantise.quantise_encoder(fp32, tmp_path / "a.onnx", max_relative_error=0.0)  # an impossible bound
    # quantising the patch embedding too makes the demo encoder's worst token turn by 20 degrees
    monkeypatch.setattr(encoder_quantise, "QUANTISED_OPS", ("MatMul", "Gemm", "Conv"))
    with pytest.raises(encoder_quantise.QuantisationError, match=r"per-token cosine 0\.\d+ < 0\.99 against the fl"):
        encoder_quantise.quantise_encoder(fp32, tmp_path / "b.onnx")
    assert not list(tmp_path.iterdir())  # nothing written, not even a scratch file


def test_only_a_float32_geovlm_encoder_is_quantised(fp32, tmp_path):
    from geovlm.models.encoder_quantise import QuantisationError, quantise_encoder
    from geovlm.models.encoder_runtime import EncoderError

    int8 = quantise_encoder(fp32, tmp_path / "int8.onnx").path
    with pytest.raises(QuantisationError, match="is a int8 encoder; int8 is made from the float32 one"):
        quantise_encoder(int8, tmp_path / "again.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx at all" * 20)
    with pytest.raises(EncoderError, match="not a readable ONNX"):
        quantise_encoder(bad, tmp_path / "c.onnx")


def test_int8_round_trips_through_load_and_a_second_start_reads_the_store(folder, monkeypatch):
    from geovlm.models import encoder_quantise, encoder_runtime
    from geovlm.models.pipeline import GenRequest, VlmPipeline

    pipe = VlmPipeline.load(folder, device="cpu", providers=["CPUExecutionProvider"], encoder_precision="int8")
    assert pipe.encoder.path.name.endswith("-int8.onnx") and pipe.info()["encoder_dtype"] == "int8"
    [result] = pipe.generate_batch([GenRequest(ms.cogeo_tiles(1)[0], [("user", "Describe.")], max_new_tokens=4)])
    assert result.tokens == 4
    stored = json.loads((folder / "geovlm-hashes.json").read_text())
    assert [v["value"]["passed"] for k, v in stored.items() if k.startswith("int8-gate:")] == [True]

    def refuse(*args, **kwargs):
        raise AssertionError("computed again on a second start")

    monkeypatch.setattr(encoder_quantise, "quantise_encoder", refuse)
    monkeypatch.setattr(encoder_runtime, "file_sha256", refuse)
    monkeypatch.setattr(encoder_runtime, "graph_facts", refuse)
    again = VlmPipeline.load(folder, device="cpu", providers=["CPUExecutionProvider"], encoder_precision="int8")
    assert again.encoder.file_hash == pipe.encoder.file_hash and again.info()["encoder_dtype"] == "int8"
    fp32 = VlmPipeline.load(folder, device="cpu", providers=["CPUExecutionProvider"])  # the default stays fp32
    assert fp32.info()["encoder_dtype"] == "float32"
    with pytest.raises(ValueError, match="encoder precision must be one of fp32, int8, not 'fp16'"):
        VlmPipeline.load(folder, device="cpu", providers=["CPUExecutionProvider"], encoder_precision="fp16")


def test_a_refused_int8_leaves_fp32_serving_and_is_not_tried_again(folder, monkeypatch, caplog):
    from geovlm.models import encoder_quantise
    from geovlm.models.pipeline import VlmPipeline

    monkeypatch.setattr(encoder_quantise, "QUANTISED_OPS", ("MatMul", "Gemm", "Conv"))  # fails the gate
    with caplog.at_level(logging.WARNING, logger="geovlm.models.pipeline"):
        pipe = VlmPipeline.load(folder, device="cpu", providers=["CPUExecutionProvider"], encoder_precision="int8")
    assert pipe.info()["encoder_dtype"] == "float32" and not list(folder.glob("*-int8.onnx*"))
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("int8 encoder refused: per-token cosine") and line.endswith("; the fp32 encoder serves")
    caplog.clear()
    monkeypatch.setattr(encoder_quantise, "quantise_encoder", lambda *a, **k: pytest.fail("quantised again"))
    with caplog.at_level(logging.WARNING, logger="geovlm.models.pipeline"):
        again = VlmPipeline.load(folder, device="cpu", providers=["CPUExecutionProvider"], encoder_precision="int8")
    assert again.info()["encoder_dtype"] == "float32" and [r.getMessage() for r in caplog.records] == [line]


def test_int8_is_not_used_on_a_gpu_provider(folder, monkeypatch, caplog):
    from geovlm.models import pipeline

    monkeypatch.setattr(pipeline, "gpu_provider", lambda providers: True)
    monkeypatch.setattr(pipeline, "ensure_encoder", lambda checkpoint, fp16=False: Path(f"fp16={fp16}.onnx"))
    with caplog.at_level(logging.WARNING, logger="geovlm.models.pipeline"):
        chosen = pipeline._ensure_encoder_for(pipeline.as_checkpoint(folder), None, "int8")
    assert chosen == Path("fp16=True.onnx") and "int8 encoder is for the CPU provider" in caplog.text


def test_export_encoder_int8_command(demo, tmp_path, capsys):
    from geovlm.cli import main
    from geovlm.models.encoder_runtime import OnnxEncoder

    out = tmp_path / "out" / "encoder-int8.onnx"
    assert main(["export-encoder", "--model", str(demo), "--out", str(out), "--int8"]) == 0
    text = capsys.readouterr().out
    assert "int8 vs float32 on 4 sample images: per-token cosine >= 0.99" in text and f"wrote {out} (int8" in text
    assert OnnxEncoder(out).metadata["geovlm.dtype"] == "int8"
    assert sorted(p.name for p in out.parent.iterdir()) == ["encoder-int8.onnx", "encoder-int8.onnx.data",
                                                            "geovlm-hashes.json"]  # no scratch left
    with pytest.raises(SystemExit):
        main(["export-encoder", "--model", str(demo), "--out", str(out), "--int8", "--fp16"])
    with pytest.raises(SystemExit):
        main(["ask", "x.tif", "q", "--encoder-precision", "fp16"])


def test_the_encoder_bench_runs_end_to_end():
    import os
    import subprocess  # nosec B404  # runs the repository's own benchmark script

    out = subprocess.run(  # nosec B603  # this interpreter and a file of the repository, no shell
        [sys.executable, str(ms.ROOT / "bench" / "bench_encoder.py"), "--smoke"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"), check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ("SMOKE RUN", "| batch 8 |", "per-token cosine, worst / mean", "answers token for token identical",
                "largest box shift", "steps where int8 picks the same token", "(served)", "one ask (3 new tokens)",
                "int8 encoder as served (--encoder-precision int8)"):
        assert row in out.stdout, row
