"""MiniGPT-v2 on the engine: conversion from the original layouts, the ONNX vision side against an independent
reference of the original architecture, greedy tokens of the whole model, `geovlm ask` end to end, exact
placement on the map, refused pickles."""

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from geovlm.cli import main  # noqa: E402

COGEO = ms.RASTERS / "cogeo.tif"
QUESTION = "[grounding] describe this image in detail"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from geovlm.models.minigpt_demo import write_minigpt_sources

    return write_minigpt_sources(tmp_path_factory.mktemp("minigpt-src"), seed=0)


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    """`geovlm convert minigptv2` of the tiny original-layout inputs."""
    out = tmp_path_factory.mktemp("minigpt") / "converted"
    argv = ["convert", "minigptv2", "--ckpt", str(sources["ckpt"]), "--eva", str(sources["eva"]),
            "--llama", str(sources["llama"]), "--out", str(out)]  # EVA width 176: 2 heads of 88, as EVA-g
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def originals(sources):
    """The original files as the original code reads them (torch.load of the pickles)."""
    eva = torch.load(sources["eva"], weights_only=True)
    ckpt = torch.load(sources["ckpt"], weights_only=True)
    return eva, ckpt["model"], float(ckpt["config"]["model"]["lora_alpha"])


@pytest.fixture(scope="module")
def pipe(converted):
    from geovlm.models.pipeline import VlmPipeline

    return VlmPipeline.load(converted, device="cpu", providers=["CPUExecutionProvider"])


def test_conversion_writes_safetensors_config_and_licences(converted, capsys):
    from geovlm.models.checkpoints import inspect_checkpoint

    files = sorted(p.name for p in converted.iterdir() if p.is_file() and not p.name.endswith(".onnx"))
    assert not [f for f in files if f.endswith((".bin", ".pth", ".pt", ".pkl", ".py"))]  # no pickles, no code
    assert {"model.safetensors", "vision.safetensors", "vision_config.json", "config.json", "geovlm.json"} <= set(files)
    info = inspect_checkpoint(converted)
    assert (info.architecture, info.family, info.input_size, info.image_tokens) == ("minigptv2", "minigptv2", 448, 16)
    vision = json.loads((converted / "vision_config.json").read_text())
    assert (vision["depth"], vision["num_heads"], vision["merge_tokens"]) == (2, 2, 4)  # 3 blocks, the last dropped
    meta = json.loads((converted / "geovlm.json").read_text())
    assert [s["input"] for s in meta["sources"]] == ["checkpoint", "eva_vit_g", "llama"]
    assert all(s["licence"] for s in meta["sources"]) and "Llama 2" in meta["licence"] and "MIT" in meta["licence"]
    assert meta["sources"][0]["lora_pairs"] == 4 and meta["sources"][0]["lora_alpha"] == 8.0


def test_the_lora_is_merged_into_the_base(converted, sources, originals):
    from safetensors.torch import load_file

    _, trained, alpha = originals
    base = load_file(str(sources["llama"] / "model.safetensors"))
    merged = load_file(str(converted / "model.safetensors"))
    for layer, tag in ((0, ""), (1, ".default")):
        stem = f"llama_model.base_model.model.model.layers.{layer}.self_attn.q_proj"
        a, b = trained[f"{stem}.lora_A{tag}.weight"], trained[f"{stem}.lora_B{tag}.weight"]
        key = f"model.layers.{layer}.self_attn.q_proj.weight"
        assert torch.allclose(merged[key], base[key] + alpha / a.shape[0] * b @ a, atol=1e-6)
        assert not torch.equal(merged[key], base[key])
    key = "model.layers.0.self_attn.k_proj.weight"  # no LoRA there: unchanged
    assert torch.equal(merged[key], base[key])


def test_vision_module_equals_the_reference_layer_by_layer(converted, originals):
    """Our MiniGptVision (torch) against the functional transcription of eva_vit.py + encode_img, block by block."""
    import minigpt_reference as ref

    from geovlm.models.checkpoints import inspect_checkpoint
    from geovlm.models.minigptv2 import load_vision

    eva, trained, _ = originals
    module = load_vision(inspect_checkpoint(converted))
    pixels = torch.randn(2, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o)) for b in module.visual_encoder.blocks]
    with torch.no_grad():
        ours = module(pixels)
        expected, hiddens = ref.encode_img(eva, trained, pixels, heads=2)
    for h in hooks:
        h.remove()
    assert len(seen) == len(hiddens) == 2
    for got, want in zip(seen, hiddens):
        assert float((got - want).abs().max()) <= 1e-5
    assert ours.shape == (2, 16, 64)
    assert float((ours - expected).abs().max()) <= 1e-5


def test_onnx_vision_side_equals_the_reference_in_fp32(converted, originals, pipe):
    """The exported graph (with its versioned metadata) equals the original architecture's forward to 1e-4."""
    import minigpt_reference as ref

    eva, trained, _ = originals
    encoder = pipe.encoder
    meta = encoder.metadata
    assert meta["geovlm.schema_version"] == "1" and meta["geovlm.architecture"] == "minigptv2"
    assert (encoder.family, encoder.fit, encoder.input_size, encoder.image_tokens) == ("minigptv2", "stretch", 448, 16)
    assert meta["geovlm.source_sha256"] == pipe.checkpoint.encoder_hash
    pixels = torch.randn(3, 3, 448, 448, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref.encode_img(eva, trained, pixels, heads=2)[0].numpy()
    got = encoder.run(pixels.numpy())
    assert got.shape == (3, 16, 64)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(got[0] - got[1]).max() > 1e-2  # different images, different features: the check can fail


def test_preprocessing_is_the_original_processor_exactly(pipe):
    """The engine's input of a non-square tile equals Blip2ImageEvalProcessor's (448x448 stretch, bicubic)."""
    import minigpt_reference as ref

    from geovlm.core.georef import fit_plan
    from geovlm.models.preprocess import fit_image, normalise

    tile = ms.cogeo_tiles(2)[1]
    assert tile.shape[0] != tile.shape[1]
    fitted = fit_image(tile, fit_plan(pipe.profile, tile.shape[1], tile.shape[0]), pipe.pad_color)
    ours = normalise([fitted], pipe.encoder.mean, pipe.encoder.std)[0]
    theirs = ref.processor(tile, 448, pipe.encoder.mean, pipe.encoder.std).numpy()
    assert np.abs(ours - theirs).max() <= 1e-6


@pytest.fixture(scope="module")
def reference(pipe, sources, originals):
    """(tile, the original code's image embeddings of it, the original-layout LLaMA with the LoRA applied at run
    time) for the whole-model comparisons: a cogeo.tif tile through the reference's own processor and encoder."""
    import minigpt_reference as ref

    eva, trained, alpha = originals
    tile = ms.cogeo_tiles(1)[0]
    pixels = ref.processor(tile, 448, pipe.encoder.mean, pipe.encoder.std)[None]
    with torch.no_grad():
        image_embeds = ref.encode_img(eva, trained, pixels, heads=2)[0]
    return tile, image_embeds, ref.lora_llama(sources["llama"], trained, alpha)


def test_greedy_tokens_equal_the_reference_model(pipe, reference):
    """Whole model: the reference (original-layout LLaMA with the LoRA applied at run time, get_context_emb's
    prompt, its own image features, greedy decoding recomputing everything) gives the engine's tokens."""
    import minigpt_reference as ref

    from geovlm.models.language import DecodeSettings

    tile, image_embeds, model = reference
    prompt = f"[INST] <Img><ImageHere></Img> {QUESTION} [/INST]"
    expected = ref.greedy(model, pipe.lm.tokenizer, prompt, image_embeds, max_new_tokens=24)

    messages = [("user", QUESTION)]
    assert pipe.prompt(messages) == prompt.replace("<ImageHere>", "<image>")
    features = pipe.encode([tile])
    assert np.abs(features[0] - image_embeds[0].numpy()).max() <= 1e-4
    decoding = pipe.lm.decoding([pipe.prompt_ids(messages)], list(features), [DecodeSettings(max_new_tokens=24)])
    [result] = decoding.run()
    got = result.token_ids[:-1] if result.finish_reason == "stop" else result.token_ids
    assert len(expected) >= 5 and got == expected


FOLLOW_UP = [("user", QUESTION), ("assistant", "<p>a white plane</p> {<49><48><57><56>}"),
             ("user", "[refer] the white plane"), ("assistant", "{<35><54><43><62>}"), ("user", "[vqa] what is it")]


@pytest.mark.parametrize("turns", [1, 3, 5])
def test_multi_turn_prompt_ids_are_the_training_conversation_format(pipe, turns):
    """A conversation's prompt ids equal MiniGPT-v2's training recipe built independently (tokenize_conversation):
    later turns without <Img></Img>, each answer closed by </s> and each later question opened by <s>."""
    import minigpt_reference as ref

    messages = FOLLOW_UP[:turns]
    pieces = ref.conversation_pieces(pipe.lm.tokenizer, messages)
    image = [pipe.lm.image_token_id] * pipe.encoder.image_tokens
    assert pipe.prompt_ids(messages) == [i for p in pieces for i in (image if p is ref.IMAGE else p)]
    expected = "[INST] <Img><image></Img> " + QUESTION + " [/INST]"
    if turns == 3:
        expected += f" {FOLLOW_UP[1][1]}</s><s>[INST] {FOLLOW_UP[2][1]} [/INST]"
        assert pipe.prompt(messages) == expected
        assert pipe.prompt(messages).count("<Img>") == 1 and pipe.prompt(messages).count("<s>") == 1


def test_a_follow_up_question_gives_the_reference_models_greedy_tokens(pipe, reference):
    """A follow-up question through the converted tiny model: the reference (original-layout LLaMA with the LoRA
    at run time, its own image features, the training conversation's ids) decodes the engine's tokens."""
    import minigpt_reference as ref

    from geovlm.models.language import DecodeSettings

    tile, image_embeds, model = reference
    messages = FOLLOW_UP[:3]
    pieces = ref.conversation_pieces(pipe.lm.tokenizer, messages)
    expected = ref.greedy_pieces(model, pieces, image_embeds, max_new_tokens=24)
    alone = ref.greedy(model, pipe.lm.tokenizer, f"[INST] <Img><ImageHere></Img> {QUESTION} [/INST]", image_embeds, 24)
    assert expected != alone  # the earlier turns change the answer: the check can fail

    features = pipe.encode([tile])
    decoding = pipe.lm.decoding([pipe.prompt_ids(messages)], list(features), [DecodeSettings(max_new_tokens=24)])
    [result] = decoding.run()
    got = result.token_ids[:-1] if result.finish_reason == "stop" else result.token_ids
    assert len(expected) >= 5 and got == expected

    # the same conversation as core/client.py sends it (image in the first turn, answers as plain text), served
    from fastapi.testclient import TestClient

    from geovlm.core.client import EngineClient
    from geovlm.engine.server import create_app
    from geovlm.models.preprocess import encode_png

    body = EngineClient("http://127.0.0.1:9")._chat_body(encode_png(tile), messages, pipe.profile, None, False,
                                                         24, 0.0, None)
    with TestClient(create_app(pipe)) as client:
        reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == result.text and result.text


def test_models_endpoint_reports_family_input_size_and_fit(pipe):
    from fastapi.testclient import TestClient

    from geovlm.engine.server import create_app

    with TestClient(create_app(pipe)) as client:
        [entry] = client.get("/v1/models").json()["data"]
    info = entry["geovlm"]
    assert (info["architecture"], info["family"], info["input_size"], info["fit"]) == (
        "minigptv2", "minigptv2", 448, "stretch")
    assert info["random_stand_in"] is False and [s["input"] for s in info["sources"]][-1] == "llama"
    assert "Llama 2" in info["licence"] and "MIT" in info["licence"]


def test_ask_end_to_end_on_a_converted_checkpoint(converted, tmp_path, capsys):
    import geopandas as gpd

    out = tmp_path / "answer.gpkg"
    argv = ["ask", str(COGEO), QUESTION, "--model", str(converted), "--window", "100,50,400,300",
            "--max-new-tokens", "16", "--out", str(out), "--providers", "CPUExecutionProvider"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "(minigptv2)" in captured.err and "400x300 px" in captured.err and "Llama 2" in captured.err
    assert "tokens, finish:" in captured.err and captured.out.strip()
    assert gpd.read_file(out, layer="objects").crs.to_epsg() == 3857


def test_a_scripted_minigpt_answer_lands_on_the_map_exactly(converted, tmp_path, capsys, monkeypatch):
    """A stand-in for the language model writes MiniGPT-v2 boxes (0-100 of the 448x448 stretched input); the
    features are the window's pixels x/100*width, y/100*height through the raster's geotransform."""
    import geopandas as gpd
    import rasterio

    from geovlm.models.pipeline import GenResult, StreamDone, VlmPipeline

    answer = "<p>plane</p> {<10><20><60><90>}<delim>{<0><0><100><100>}"

    def scripted(self, request):
        assert self.profile.name == "minigptv2" and request.image.shape == (300, 400, 3)
        yield answer
        yield StreamDone(GenResult(answer, 12, "stop"))

    monkeypatch.setattr(VlmPipeline, "stream", scripted)
    out = tmp_path / "scripted.gpkg"
    argv = ["ask", str(COGEO), "[refer] plane", "--model", str(converted), "--window", "100,50,400,300",
            "--out", str(out), "--providers", "CPUExecutionProvider"]
    assert main(argv) == 0
    layer = gpd.read_file(out, layer="objects")
    with rasterio.open(COGEO) as src:
        transform = src.transform
    for geometry, (x1, y1, x2, y2) in zip(layer.geometry, ((10, 20, 60, 90), (0, 0, 100, 100))):
        cols = (100 + x1 / 100 * 400, 100 + x2 / 100 * 400)
        rows = (50 + y1 / 100 * 300, 50 + y2 / 100 * 300)
        corners = [transform * (c, r) for c in cols for r in rows]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        minx, miny, maxx, maxy = geometry.bounds
        assert np.allclose([minx, miny, maxx, maxy], [min(xs), min(ys), max(xs), max(ys)], rtol=0, atol=1e-6)
        assert geometry.area == pytest.approx((max(xs) - min(xs)) * (max(ys) - min(ys)), rel=1e-9)
    assert len(layer) == 2 and list(layer["label"]) == ["plane", "plane"]


class _Planted:
    """Unpickling this runs os.mkdir(path): code in a pickle."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
@pytest.mark.parametrize("which", ["ckpt", "eva"])
def test_conversion_refuses_a_pickle_with_code(sources, tmp_path, capsys, which, legacy):
    marker = tmp_path / "code-ran"
    planted = tmp_path / f"planted-{which}.pth"
    data = torch.load(sources[which], weights_only=True)
    data["payload"] = _Planted(marker)
    torch.save(data, planted, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(pickle.UnpicklingError):  # the file really holds code the weights-only loader refuses
        torch.load(planted, weights_only=True)
    inputs = {k: str(v) for k, v in sources.items()}
    inputs[which] = str(planted)
    argv = ["convert", "minigptv2", "--ckpt", inputs["ckpt"], "--eva", inputs["eva"], "--llama", inputs["llama"],
            "--out", str(tmp_path / "out")]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert str(planted) in err and "weights_only" in err
    assert not marker.exists() and not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_legacy_format_eva_file_converts_the_same(sources, converted, tmp_path):
    """EVA files saved in torch's pre-zip format (no memory map) are read weights-only too, with the same result."""
    from safetensors.torch import load_file

    from geovlm.models.convert_minigptv2 import convert_minigptv2

    legacy = tmp_path / "eva_legacy.pth"
    torch.save(torch.load(sources["eva"], weights_only=True), legacy, _use_new_zipfile_serialization=False)
    out = convert_minigptv2(sources["ckpt"], legacy, sources["llama"], tmp_path / "out")
    ours, reference = load_file(str(out / "vision.safetensors")), load_file(str(converted / "vision.safetensors"))
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)


def test_conversion_errors_are_clear(sources, tmp_path, capsys):
    from geovlm.models.convert import ConversionError
    from geovlm.models.convert_minigptv2 import convert_minigptv2

    with pytest.raises(ConversionError, match="unexpected weight 'cls_token' for a MiniGPT-v2 checkpoint"):
        convert_minigptv2(sources["eva"], sources["eva"], sources["llama"], tmp_path / "a")
    eva = torch.load(sources["eva"], weights_only=True)
    eva["pos_embed"] = eva["pos_embed"][..., :100]
    torch.save(eva, tmp_path / "eva100.pth")
    with pytest.raises(ConversionError, match="--vision-heads"):
        convert_minigptv2(sources["ckpt"], tmp_path / "eva100.pth", sources["llama"], tmp_path / "b")
    wrong = tmp_path / "llama-copy"
    shutil.copytree(sources["llama"], wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps(dict(config, hidden_size=32, intermediate_size=64)))
    with pytest.raises(ConversionError, match="llama_proj"):
        convert_minigptv2(sources["ckpt"], sources["eva"], wrong, tmp_path / "c")


def test_skyeyegpt_profile_inherits_minigptv2():
    from geovlm.core.profiles import get_profile

    mini, sky = get_profile("minigptv2"), get_profile("skyeyegpt")
    assert (sky.name, sky.fit, sky.input_size, sky.box_syntax) == ("skyeyegpt", "stretch", 448, "minigpt")
    assert sky.prompt_template == mini.prompt_template and sky.task_words == mini.task_words
    assert sky.follow_up() == mini.follow_up() == ("</s><s>", "[INST] {question} [/INST]")
    assert sky.prompt("x", task="grounding") == "[INST] <Img><image></Img> [grounding] x [/INST]"


def test_demo_model_command_builds_the_minigpt_stand_in(tmp_path, capsys):
    from geovlm.models.checkpoints import inspect_checkpoint

    assert main(["demo-model", str(tmp_path / "d"), "--family", "skyeyegpt", "--seed", "1"]) == 0
    assert "random" in capsys.readouterr().out
    info = inspect_checkpoint(tmp_path / "d")
    described = (info.architecture, info.family, info.random_stand_in, info.image_tokens)
    assert described == ("minigptv2", "skyeyegpt", True, 16)
    assert sum(p.stat().st_size for p in (tmp_path / "d").iterdir()) < 16 << 20


def test_minigpt_folder_errors(converted, tmp_path):
    from geovlm.models.checkpoints import CheckpointError, inspect_checkpoint

    with pytest.raises(CheckpointError, match="not served by the MiniGPT-v2 engine"):
        inspect_checkpoint(converted, family="geochat")
    assert inspect_checkpoint(converted, family="skyeyegpt").family == "skyeyegpt"
    copy = tmp_path / "copy"
    shutil.copytree(converted, copy, ignore=shutil.ignore_patterns("*.onnx"))
    (copy / "vision.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no vision.safetensors"):
        inspect_checkpoint(copy)


def test_batched_generation_equals_one_by_one_and_stops_at_the_end_of_turn(pipe):
    """Two tiles in one batched generation give each the tokens it gets alone; LLaMA-2's end of turn is </s>."""
    from geovlm.models.pipeline import GenRequest

    tiles = ms.cogeo_tiles(2)
    requests = [GenRequest(t, [("user", q)], max_new_tokens=12) for t, q in zip(tiles, (QUESTION, "[vqa] what is it"))]
    batched = pipe.generate_batch(requests)
    alone = [pipe.generate_batch([r])[0] for r in requests]
    assert [b.text for b in batched] == [a.text for a in alone] and batched[0].text != batched[1].text
    assert pipe.lm.eos_ids == {pipe.lm.tokenizer.convert_tokens_to_ids("</s>")} and "</s>" in pipe.profile.stop
    assert pipe.lm.image_token_id == pipe.lm.tokenizer.unk_token_id


def test_the_random_stand_ins_answers_are_printable_text(pipe):
    """Its noise was a third byte tokens: NULs, escapes and broken UTF-8 (the demo tokenizer now has printable
    byte tokens only); greedy and sampled answers about four tiles."""
    from geovlm.models.pipeline import GenRequest

    requests = [GenRequest(tile, [("user", QUESTION)], max_new_tokens=64, temperature=temperature, seed=1)
                for tile in ms.cogeo_tiles(4) for temperature in (0.0, 1.5)]
    texts = [r.text for r in pipe.generate_batch(requests)]
    assert all(texts) and all(c.isprintable() for text in texts for c in text), texts


def test_export_encoder_command_on_a_minigpt_folder(converted, tmp_path, capsys):
    out = tmp_path / "enc.onnx"
    assert main(["export-encoder", "--model", str(converted), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "16 image tokens" in text and "max abs difference ONNX vs torch" in text


def test_ask_through_geovlm_serve_equals_in_process(converted, tmp_path, capsys):
    """`geovlm serve` on the converted folder (a local engine started by `ask --engine local`): the view sent over
    HTTP gets the in-process greedy answer, and the family comes from the engine's /v1/models."""
    common = ["ask", str(COGEO), QUESTION, "--model", str(converted), "--window", "100,50,400,300",
              "--max-new-tokens", "10"]
    assert main(common) == 0
    in_process = capsys.readouterr().out.strip()
    assert main(common + ["--engine", "local", "--out", str(tmp_path / "via_engine.gpkg")]) == 0
    captured = capsys.readouterr()
    assert "starting a local engine" in captured.err
    assert captured.out.strip() == in_process and in_process
