"""Fast start: digests and the export's metadata read once per file version, the encoder's session options,
the pipeline's memory."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402

from geovlm.models import file_hashes  # noqa: E402


def _counting(calls, value="d1"):
    return lambda: calls.append(1) or value


def test_a_digest_is_computed_once_per_file_version(tmp_path):
    data = tmp_path / "w.bin"
    data.write_bytes(b"abc")
    calls = []
    assert file_hashes.cached_value("w", [data], _counting(calls), tmp_path) == "d1"
    assert file_hashes.cached_value("w", [data], _counting(calls, "other"), tmp_path) == "d1"
    assert calls == [1]
    stored = json.loads((tmp_path / file_hashes.HASHES_FILE).read_text())
    assert stored["w"]["files"] == [["w.bin", 3, data.stat().st_mtime_ns]]
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 1))  # same size, new mtime
    assert file_hashes.cached_value("w", [data], _counting(calls, "d2"), tmp_path) == "d2"
    data.write_bytes(b"abcd")
    os.utime(data, ns=(0, stored["w"]["files"][0][2]))  # the old mtime, another size
    assert file_hashes.cached_value("w", [data], _counting(calls, "d3"), tmp_path) == "d3"
    assert len(calls) == 3
    assert file_hashes.cached_value("other", [data], _counting(calls, "o"), tmp_path) == "o"  # names are apart


def test_a_broken_or_unwritable_store_only_costs_the_computation(tmp_path, monkeypatch):
    data = tmp_path / "w.bin"
    data.write_bytes(b"abc")
    (tmp_path / file_hashes.HASHES_FILE).write_text("{not json")
    calls = []
    assert file_hashes.cached_value("w", [data], _counting(calls), tmp_path) == "d1"
    assert file_hashes.cached_value("w", [data], _counting(calls), tmp_path) == "d1" and calls == [1]
    readonly = tmp_path / "ro"
    readonly.mkdir()
    (readonly / "w.bin").write_bytes(b"x")
    monkeypatch.setattr(file_hashes.os, "access", lambda path, mode: False)
    monkeypatch.setenv("GEOVLM_CACHE", str(tmp_path / "cache"))
    assert file_hashes.cached_value("w", [readonly / "w.bin"], _counting(calls, "r"), readonly) == "r"
    assert not (readonly / file_hashes.HASHES_FILE).exists()
    assert len(list((tmp_path / "cache" / "hashes").glob("*.json"))) == 1
    assert file_hashes.cached_value("w", [readonly / "w.bin"], _counting(calls, "x"), readonly) == "r"
    with pytest.raises(OSError):
        file_hashes.cached_value("w", [tmp_path / "missing"], _counting(calls), tmp_path)


def test_a_second_load_hashes_nothing_and_keeps_no_vision_tower(tmp_path_factory, tmp_path, monkeypatch):
    from geovlm.models import checkpoints, encoder_runtime
    from geovlm.models.pipeline import VlmPipeline

    folder = tmp_path / "ckpt"
    shutil.copytree(ms.demo_dir(tmp_path_factory), folder, ignore=shutil.ignore_patterns(file_hashes.HASHES_FILE))
    first = VlmPipeline.load(folder, device="cpu", providers=["CPUExecutionProvider"])
    calls = []
    real_weights, real_file = checkpoints._encoder_weights_sha256, encoder_runtime.file_sha256
    monkeypatch.setattr(checkpoints, "_encoder_weights_sha256", lambda files: calls.append(1) or real_weights(files))
    monkeypatch.setattr(encoder_runtime, "file_sha256", lambda path: calls.append(2) or real_file(path))
    monkeypatch.setattr(encoder_runtime, "graph_facts", lambda path: calls.append(3))  # metadata read once too
    second = VlmPipeline.load(folder, device="cpu", providers=["CPUExecutionProvider"])
    assert calls == []
    assert second.encoder.file_hash == first.encoder.file_hash
    assert second.encoder.source_hash == first.encoder.source_hash
    path = second.encoder.path
    assert second.encoder.file_hash == encoder_runtime._files_sha256([path, path.with_name(path.name + ".data")])
    model = second.lm.model.model
    assert model.vision_tower is None and model.multi_modal_projector is None  # the ONNX encoder serves
    image = ms.random_image(3)
    assert second.encode([image]).shape == (1, 64, 64)


def test_encoder_session_shares_the_cores_without_spinning(tmp_path_factory):
    import torch

    pipe = ms.pipeline(str(ms.demo_dir(tmp_path_factory)))
    options = pipe.encoder.session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads() and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_ALL")
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern  # activations not kept after a run


def test_a_gpu_provider_gets_the_fp16_encoder_and_a_cpu_the_fp32_one(tmp_path_factory, tmp_path, monkeypatch):
    import onnxruntime

    from geovlm.models import pipeline
    from geovlm.models.encoder_runtime import OnnxEncoder

    assert not pipeline.gpu_provider(["CPUExecutionProvider"])
    gpu_build = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: gpu_build)
    assert pipeline.gpu_provider(None) and pipeline.gpu_provider(["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert not pipeline.gpu_provider(["CPUExecutionProvider", "CUDAExecutionProvider"])
    folder = tmp_path / "ckpt"
    shutil.copytree(ms.demo_dir(tmp_path_factory), folder, ignore=shutil.ignore_patterns("*.onnx"))
    path = pipeline._ensure_encoder_for(pipeline.as_checkpoint(folder), None)
    assert path.name.endswith("-float16.onnx")
    monkeypatch.undo()
    assert OnnxEncoder(path).metadata["geovlm.dtype"] == "float16"  # passed the fp16 parity gate at export
    assert pipeline._ensure_encoder_for(pipeline.as_checkpoint(folder), None).name.endswith("-float32.onnx")


def test_the_first_answer_reports_the_background_loading_as_load_not_decode(tmp_path_factory, monkeypatch):
    """The compiled CPU step is built in the background after the load returns (numba's typed lists and kernels
    loaded from its cache, ~0.6 s here): the first answer's first decode step waited for it and reported that wait
    as decode time. Made slow on purpose here (0.8 s more), the wait must be reported as "load", and the decode
    time must stay the decoding's (a later answer's, give or take)."""
    import time

    from geovlm.models import cpu_decode_step
    from geovlm.models.pipeline import GenRequest, VlmPipeline

    pytest.importorskip("numba")
    warm_up = cpu_decode_step.CpuDecodeStep.warm_up

    def slow_warm_up(self):
        time.sleep(0.8)
        warm_up(self)

    monkeypatch.setattr(cpu_decode_step.CpuDecodeStep, "warm_up", slow_warm_up)
    pipe = VlmPipeline.load(ms.demo_dir(tmp_path_factory), device="cpu", providers=["CPUExecutionProvider"])
    request = GenRequest(ms.random_image(0), [("user", "Describe the image")], max_new_tokens=8)
    first = pipe.generate_batch([request])[0]
    assert pipe.lm.decoder.step_kernel == "numba"
    later = pipe.generate_batch([request])[0]
    assert first.tokens == later.tokens == 8
    assert first.timings["load"] >= 0.5, first.timings
    assert first.timings["decode"] < 0.4 + 3 * later.timings["decode"], (first.timings, later.timings)
    assert "load" not in later.timings


def test_the_step_kernels_are_preloaded_only_for_a_model_that_may_take_the_step():
    """The preload (numba's kernels loaded, or compiled the first time, beside the weights) is for a Llama-family
    text model without biases; a Qwen2 one (biases) or a model of another kind would only pay for it."""
    from geovlm.models.pipeline import may_take_compiled_step

    assert may_take_compiled_step({"model_type": "llava", "text_config": {"model_type": "llama"}})
    assert may_take_compiled_step({"model_type": "llava", "text_config": {"model_type": "mistral"}})
    assert may_take_compiled_step({"model_type": "llava", "text_config": {}})  # llava-hf's default text model
    assert may_take_compiled_step({"model_type": "llama"})  # MiniGPT-v2's bare LLaMA
    assert not may_take_compiled_step({"model_type": "llava", "text_config": {"model_type": "qwen2"}})
    assert not may_take_compiled_step({"model_type": "llama", "attention_bias": True})
    assert not may_take_compiled_step({"model_type": "qwen2_5_vl"})


def test_the_step_kernels_start_loading_once_the_weights_are_in(tmp_path_factory, monkeypatch):
    """numba's loading of the compiled step's kernels holds the GIL that `from_pretrained` needs: started before
    the weights, it made the cold load 3x as long (0.18 -> 0.55 s on the bench model, docs/benchmarks.md). It
    starts once the language model is loaded, and still starts for a CPU model that takes the compiled step."""
    from geovlm.models import cpu_decode_step, pipeline

    events = []
    load = pipeline.LanguageModel.load

    def recording_load(*args, **kwargs):
        events.append("weights loading")
        lm = load(*args, **kwargs)
        events.append("weights loaded")
        return lm

    monkeypatch.setattr(pipeline.LanguageModel, "load", recording_load)
    monkeypatch.setattr(cpu_decode_step, "start_preload", lambda: events.append("preload started"))
    pipeline.VlmPipeline.load(ms.demo_dir(tmp_path_factory), device="cpu", providers=["CPUExecutionProvider"])
    assert events == ["weights loading", "weights loaded", "preload started"]
