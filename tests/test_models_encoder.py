"""ONNX vision encoder: parity with torch, metadata schema, runtime errors, providers, encoding cache."""

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ms.demo_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(demo, tmp_path_factory):
    from geovlm.models.encoder_export import export_encoder

    out = tmp_path_factory.mktemp("enc") / "encoder.onnx"
    return export_encoder(demo, out, check_batches=(1, 2, 5), model=ms.hf_model(str(demo)))


def test_export_parity_batches_1_2_5(exported):
    assert set(exported.max_abs_diff) == {1, 2, 5}
    for batch, diff in exported.max_abs_diff.items():
        assert diff <= 1e-4, (batch, diff)


def test_parity_on_real_preprocessed_tiles(demo, exported):
    from geovlm.core.georef import fit_plan
    from geovlm.core.profiles import get_profile
    from geovlm.models.encoder_export import torch_image_features
    from geovlm.models.encoder_runtime import OnnxEncoder
    from geovlm.models.preprocess import fit_image, normalise

    enc = OnnxEncoder(exported.path, providers=["CPUExecutionProvider"])
    profile = get_profile(enc.family)
    tiles = ms.cogeo_tiles(5)
    fitted = [fit_image(t, fit_plan(profile, t.shape[1], t.shape[0]), profile.pad_color) for t in tiles]
    pixels = normalise(fitted, enc.mean, enc.std)
    model = ms.hf_model(str(demo))
    for n in (1, 2, 5):
        got = enc.run(pixels[:n])
        ref = torch_image_features(model, torch.from_numpy(pixels[:n])).numpy()
        assert got.shape == (n, enc.image_tokens, enc.hidden_size)
        assert np.abs(got - ref).max() <= 1e-4
    # different tiles give different features (the check above is not vacuous)
    assert np.abs(enc.run(pixels[:1]) - enc.run(pixels[1:2])).max() > 1e-2


def test_metadata_schema(demo, exported):
    from geovlm.models.checkpoints import encoder_weights_hash

    meta = exported.metadata
    graph = onnx.load(str(exported.path))
    props = {p.key: p.value for p in graph.metadata_props}
    assert props == meta
    assert props["geovlm.schema"] == "geovlm-encoder" and props["geovlm.schema_version"] == "1"
    assert props["geovlm.family"] == "geochat" and props["geovlm.fit"] == "pad"
    assert props["geovlm.input_size"] == "504" and props["geovlm.image_tokens"] == "64"
    assert props["geovlm.hidden_size"] == "64" and props["geovlm.feature_layer"] == "-2"
    assert props["geovlm.dtype"] == "float32"
    assert props["geovlm.source_sha256"] == encoder_weights_hash(demo)
    dim0 = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # a symbolic (dynamic) batch axis


def test_the_weights_lie_beside_the_graph_aligned_for_memory_mapping(demo, exported, tmp_path):
    from geovlm.models import encoder_export
    from geovlm.models.encoder_runtime import OnnxEncoder

    weights = exported.path.with_name(exported.path.name + ".data")
    assert weights.stat().st_size > 1e6 > exported.path.stat().st_size  # the graph file holds no weights
    graph = onnx.load(str(exported.path), load_external_data=False)
    placed = {t.name: {e.key: e.value for e in t.external_data} for t in graph.graph.initializer if t.external_data}
    assert placed and {p["location"] for p in placed.values()} == {weights.name}
    big = [p for p in placed.values() if int(p["length"]) >= 1 << 20]
    assert big and all(int(p["offset"]) % encoder_export.WEIGHTS_ALIGNMENT == 0 for p in big)  # mmap-able
    # the weights file is part of what the encoding cache's key and the cached facts are computed from
    copy = tmp_path / "e.onnx"
    shutil.copy(exported.path, copy)
    shutil.copy(weights, tmp_path / "e.onnx.data")
    first = OnnxEncoder(copy).file_hash
    data = bytearray((tmp_path / "e.onnx.data").read_bytes())
    data[-1] ^= 1
    (tmp_path / "e.onnx.data").write_bytes(bytes(data))
    assert OnnxEncoder(copy).file_hash != first


def test_export_rejects_mismatch(demo, tmp_path, monkeypatch):
    from geovlm.models import encoder_export

    monkeypatch.setitem(encoder_export.TOLERANCE, "float32", 0.0)
    with pytest.raises(encoder_export.ExportError, match="export rejected"):
        encoder_export.export_encoder(demo, tmp_path / "e.onnx", check_batches=(1,), model=ms.hf_model(str(demo)))
    assert not list(tmp_path.iterdir())  # neither the graph, nor its weights, nor the scratch folder


def test_an_interrupted_export_leaves_nothing_behind(demo, tmp_path, monkeypatch):
    from geovlm.models import encoder_export
    from geovlm.models.encoder_runtime import OnnxEncoder
    from geovlm.models.pipeline import ensure_encoder

    folder = tmp_path / "ckpt"
    shutil.copytree(demo, folder, ignore=shutil.ignore_patterns("encoder-*"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the graph is written, before it is stamped and checked

    monkeypatch.setattr(encoder_export, "metadata_for", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_encoder(folder, model=ms.hf_model(str(demo)))
    assert not list(folder.glob("encoder-*")) and not list(folder.glob(".encoder-*"))  # no scratch folder either
    monkeypatch.undo()
    assert OnnxEncoder(ensure_encoder(folder, model=ms.hf_model(str(demo)))).family == "geochat"


def test_each_family_gets_its_own_cached_encoder(demo, tmp_path):
    from geovlm.models.encoder_runtime import OnnxEncoder
    from geovlm.models.pipeline import ensure_encoder

    geochat = ensure_encoder(demo, model=ms.hf_model(str(demo)))  # the one the session's pipeline uses
    folder = tmp_path / "ckpt"
    shutil.copytree(demo, folder)
    other = ensure_encoder(folder, "skysensegpt", model=ms.hf_model(str(demo)))
    assert other.name != geochat.name and (folder / geochat.name).is_file()
    encoder = OnnxEncoder(other)
    assert (encoder.family, encoder.fit) == ("skysensegpt", "stretch")


def test_corrupt_and_foreign_onnx(tmp_path):
    from onnx import TensorProto, helper

    from geovlm.models.encoder_runtime import EncoderError, OnnxEncoder

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(EncoderError, match="not a readable ONNX"):
        OnnxEncoder(bad)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(EncoderError, match="not a GeoVLM encoder"):
        OnnxEncoder(foreign)
    with pytest.raises(EncoderError, match="does not exist"):
        OnnxEncoder(tmp_path / "missing.onnx")


def _identity_onnx(path, metadata, shape, dtype=None, name="pixel_values"):
    """A graph that passes its input through, with the given input signature and metadata_props."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(name, dtype or TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", dtype or TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Identity", [name], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_incomplete_metadata_or_a_wrong_input_is_refused_on_opening(exported, tmp_path):
    from onnx import TensorProto

    from geovlm.models.encoder_runtime import EncoderError, OnnxEncoder

    meta, shape = exported.metadata, ["batch", 3, 504, 504]
    partial = {k: meta[k] for k in ("geovlm.schema", "geovlm.schema_version", "geovlm.family")}
    with pytest.raises(EncoderError, match="lacks .*geovlm.hidden_size"):
        OnnxEncoder(_identity_onnx(tmp_path / "partial.onnx", partial, shape))
    with pytest.raises(EncoderError, match="geovlm.mean"):
        OnnxEncoder(_identity_onnx(tmp_path / "mean.onnx", dict(meta, **{"geovlm.mean": "[0.5, 0.5"}), shape))
    with pytest.raises(EncoderError, match="geovlm.image_tokens"):
        OnnxEncoder(_identity_onnx(tmp_path / "tokens.onnx", dict(meta, **{"geovlm.image_tokens": "many"}), shape))
    wrong_inputs = {"rank": ([504, 504], None, "pixel_values"), "dtype": (shape, TensorProto.INT64, "pixel_values"),
                    "name": (shape, None, "x"), "size": (["batch", 3, 336, 336], None, "pixel_values")}
    for kind, (dims, dtype, name) in wrong_inputs.items():
        with pytest.raises(EncoderError, match=r"takes pixel_values float32 \[batch, 3, 504, 504\]"):
            OnnxEncoder(_identity_onnx(tmp_path / f"{kind}.onnx", meta, dims, dtype, name))
    assert OnnxEncoder(_identity_onnx(tmp_path / "fits.onnx", meta, shape)).hidden_size == 64  # not over-strict


def test_metadata_must_fit_language_model(exported, caplog):
    import onnxruntime

    from geovlm.models.encoder_runtime import EncoderError, OnnxEncoder

    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level(logging.INFO, logger="geovlm.models.encoder_runtime"):
        enc = OnnxEncoder(exported.path, providers=wanted)
        provider = enc.provider  # waits for the session, built in the background, which logs its provider
    first = next(p for p in wanted if p in onnxruntime.get_available_providers())
    assert provider == first  # the first available one runs (the CPU here, the GPU on a GPU machine)
    assert f"runs on {first}" in caplog.text
    enc.check_fits(64, 64, exported.metadata["geovlm.source_sha256"])
    with pytest.raises(EncoderError, match="hidden size"):
        enc.check_fits(128, 64)
    with pytest.raises(EncoderError, match="image tokens"):
        enc.check_fits(64, 576)
    with pytest.raises(EncoderError, match="other vision weights"):
        enc.check_fits(64, 64, "0" * 64)
    with pytest.raises(EncoderError, match="encoder input"):
        enc.run(np.zeros((1, 3, 336, 336), np.float32))


def test_fp16_export_close_and_copies_only_the_vision_encoder(demo, tmp_path, monkeypatch):
    from geovlm.models.encoder_export import export_encoder

    model = ms.hf_model(str(demo))

    def refuse(self, memo):
        raise AssertionError("the fp16 export copied the language model")

    monkeypatch.setattr(type(model.model.language_model), "__deepcopy__", refuse, raising=False)
    report = export_encoder(demo, tmp_path / "e16.onnx", fp16=True, check_batches=(2,), model=model)
    assert report.metadata["geovlm.dtype"] == "float16"
    assert report.max_abs_diff[2] <= 2e-2
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the reference stays fp32


def test_export_without_a_model_loads_only_the_vision_weights(demo, tmp_path, monkeypatch):
    from geovlm.models import encoder_export
    from geovlm.models.checkpoints import load_vision_model

    vision = load_vision_model(demo)
    loaded = {name.split(".")[1] for name, p in vision.named_parameters() if p.device.type != "meta"}
    assert loaded == {"vision_tower", "multi_modal_projector"}  # the language model takes no memory
    pixels = torch.randn(2, 3, 504, 504, generator=torch.Generator().manual_seed(1))
    full = encoder_export.torch_image_features(ms.hf_model(str(demo)), pixels)
    assert torch.equal(encoder_export.torch_image_features(vision, pixels), full)

    def refuse(*args, **kwargs):
        raise AssertionError("the export loaded the whole model")

    monkeypatch.setattr(encoder_export, "load_model", refuse, raising=False)
    report = encoder_export.export_encoder(demo, tmp_path / "e.onnx", check_batches=(1,))
    assert report.max_abs_diff[1] <= 1e-4


def test_encoding_cache_skips_encoder(demo, monkeypatch):
    pipe = ms.pipeline(str(demo))
    calls = []
    real_run = pipe.encoder.run
    monkeypatch.setattr(pipe.encoder, "run", lambda px: calls.append(len(px)) or real_run(px))
    a, b = ms.random_image(101), ms.random_image(102)
    first = pipe.encode([a, b])
    again = pipe.encode([b.copy(), a.copy()])
    assert calls == [2]  # the second call found both in the cache
    np.testing.assert_array_equal(first[::-1], again)
    pipe.encode([a, ms.random_image(103)])
    assert calls == [2, 1]
