"""Conversions on tiny checkpoints written here in the original layouts (GeoChat, RS-LLaVA, pickled llava-hf)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402,F401  (sets HF_HUB_OFFLINE)

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    patch_size=42,
    image_size=336,
    hidden_act="quick_gelu",
    projection_dim=32,
)
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=120,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
)


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(["a harbour with ships and planes", "USER: describe ASSISTANT: a road"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return len(fast)


def _write_clip(folder: Path):
    """openai/clip-vit-large-patch14-336 layout (scaled down): CLIPConfig json, pickled CLIPModel weights."""
    folder.mkdir()
    torch.manual_seed(1)
    vision = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    state = {f"vision_model.{k}": v for k, v in vision.state_dict().items()}
    state["vision_model.embeddings.position_ids"] = torch.arange(65)[None]
    state["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 16)
    state["logit_scale"] = torch.tensor(2.6)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": VISION, "text_config": {}}))
    return vision


def _projector(prefix: str, generator):
    return {
        f"{prefix}mm_projector.0.weight": torch.randn(64, 32, generator=generator) * 0.2,
        f"{prefix}mm_projector.0.bias": torch.randn(64, generator=generator) * 0.2,
        f"{prefix}mm_projector.2.weight": torch.randn(64, 64, generator=generator) * 0.2,
        f"{prefix}mm_projector.2.bias": torch.randn(64, generator=generator) * 0.2,
    }


def _mm_config(model_type):
    return {
        "model_type": model_type,
        "mm_hidden_size": 32,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad",
    }


def _geochat_source(folder: Path, **config):
    """A tiny GeoChat-layout checkpoint (safetensors): its Llama (seeded) and vocabulary size."""
    folder.mkdir()
    vocab = _tokenizer(folder)
    torch.manual_seed(9)
    llama = LlamaForCausalLM(LlamaConfig(**dict(TEXT, vocab_size=vocab))).eval()
    projector = _projector("model.", torch.Generator().manual_seed(3))
    save_file(dict(llama.state_dict(), **projector), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**TEXT, "vocab_size": vocab, **_mm_config("geochat"), **config}))
    return llama, vocab


def _geochat_table(clip):
    """GeoChat's recipe, computed here: the CLIP's 8x8 patch position rows resized bicubically, align_corners=True,
    to 12x12 (504 px), after the CLS row."""
    table = clip.embeddings.position_embedding.weight.detach()
    grid = table[1:].reshape(1, 8, 8, 32).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(12, 12), mode="bicubic", align_corners=True)
    return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(144, 32)])


def _reference_features(vision_state, image_size, table, projector, pixels):
    """The original recipe: CLIP with `table` as its position embedding, hidden_states[-2] minus CLS, MLP."""
    config = CLIPVisionConfig(**dict(VISION, image_size=image_size))
    tower = CLIPVisionModel(config).eval()
    state = dict(vision_state, **{"embeddings.position_embedding.weight": table})
    tower.load_state_dict(state, strict=False)
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        p = {k.split("mm_projector.")[1]: v for k, v in projector.items()}
        x = torch.nn.functional.gelu(hidden @ p["0.weight"].T + p["0.bias"])
        return x @ p["2.weight"].T + p["2.bias"]


def _converted_features(out, pixels):
    from geovlm.models.checkpoints import load_model
    from geovlm.models.encoder_export import torch_image_features

    return torch_image_features(load_model(out), pixels)


def test_geochat_conversion_matches_the_original_recipe(tmp_path):
    from geovlm.models.checkpoints import inspect_checkpoint, load_vision_model
    from geovlm.models.convert import convert_geochat
    from geovlm.models.encoder_export import torch_image_features

    clip = _write_clip(tmp_path / "clip")
    src = tmp_path / "geochat-tiny"
    src.mkdir()
    vocab = _tokenizer(src)
    torch.manual_seed(2)
    llama = LlamaForCausalLM(LlamaConfig(**dict(TEXT, vocab_size=vocab))).eval()
    g = torch.Generator().manual_seed(3)
    state = dict(llama.state_dict(), **_projector("model.", g))
    torch.save(state, src / "pytorch_model-00001-of-00001.bin")  # GeoChat ships pickled shards
    (src / "config.json").write_text(json.dumps(dict(TEXT, vocab_size=vocab, **_mm_config("geochat"))))

    out = convert_geochat(src, tmp_path / "clip", tmp_path / "out", family="geochat", image_size=504)
    info = inspect_checkpoint(out)
    assert info.family == "geochat"
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["image_size"] == 504 and config["image_seq_length"] == 144

    resized = _geochat_table(clip)
    pixels = torch.randn(3, 3, 504, 504, generator=torch.Generator().manual_seed(4))
    ref = _reference_features(
        clip.state_dict(), 504, resized, _projector("model.", torch.Generator().manual_seed(3)), pixels
    )
    got = _converted_features(out, pixels)
    assert (got - ref).abs().max() <= 1e-6
    assert torch.equal(torch_image_features(load_vision_model(out), pixels), got)  # vision_tower.vision_model.*
    # transformers' own run-time interpolation (align_corners=False) is measurably different
    with torch.no_grad():
        tower = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
        tower.load_state_dict(clip.state_dict())
        other = tower(pixels, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states[-2][:, 1:]
        mine = CLIPVisionModel(CLIPVisionConfig(**dict(VISION, image_size=504))).eval()
        mine.load_state_dict(dict(clip.state_dict(), **{"embeddings.position_embedding.weight": resized}))
        assert (mine(pixels, output_hidden_states=True).hidden_states[-2][:, 1:] - other).abs().max() > 1e-4

    # the language model is unchanged for the original vocabulary; <image> and <pad> were added
    from geovlm.models.checkpoints import load_model, load_tokenizer

    tok = load_tokenizer(out)
    assert tok.convert_tokens_to_ids("<image>") == config["image_token_index"] >= vocab
    ids = torch.tensor([[1, 5, 9, 30, 2]])
    with torch.no_grad():
        new = load_model(out)(input_ids=ids).logits[..., :vocab]
        assert (new - llama(input_ids=ids).logits).abs().max() <= 1e-5


def test_geochat_converted_model_runs_in_the_pipeline(tmp_path):
    """The converted folder in the pipeline: its ONNX features are the original recipe's, and its greedy answer is
    transformers' generate on the same folder."""
    from geovlm.core.georef import fit_plan
    from geovlm.models.checkpoints import load_model
    from geovlm.models.convert import convert_geochat
    from geovlm.models.pipeline import GenRequest, VlmPipeline
    from geovlm.models.preprocess import fit_image, normalise

    clip = _write_clip(tmp_path / "clip")
    _geochat_source(tmp_path / "src")
    out = convert_geochat(tmp_path / "src", tmp_path / "clip", tmp_path / "out", family="skysensegpt")
    pipe = VlmPipeline.load(out, device="cpu", providers=["CPUExecutionProvider"])
    assert pipe.info()["family"] == "skysensegpt" and pipe.info()["random_stand_in"] is False

    image = ms.random_image(0)
    plan = fit_plan(pipe.profile, image.shape[1], image.shape[0])
    pixels = normalise([fit_image(image, plan, pipe.pad_color)], pipe.encoder.mean, pipe.encoder.std)
    projector = _projector("model.", torch.Generator().manual_seed(3))
    ref = _reference_features(clip.state_dict(), 504, _geochat_table(clip), projector, torch.from_numpy(pixels))
    assert np.abs(pipe.encode([image]) - ref.numpy()).max() <= 1e-4

    messages = [("user", "[detection]ships")]
    result = pipe.generate_batch([GenRequest(image, messages, max_new_tokens=8)])[0]
    ids = torch.tensor([pipe.prompt_ids(messages)])
    with torch.no_grad():
        generated = load_model(out).generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                             pixel_values=torch.from_numpy(pixels), max_new_tokens=8, do_sample=False)
    tokens = generated[0, ids.shape[1]:]
    assert result.tokens == len(tokens) and result.text == pipe.lm.tokenizer.decode(tokens, skip_special_tokens=True)
    assert result.text.strip()


def test_rsllava_lora_is_merged(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    from geovlm.models.convert import convert_rsllava, read_tensors

    clip = _write_clip(tmp_path / "clip")
    base = tmp_path / "neural-chat-tiny"
    torch.manual_seed(5)
    mistral = MistralForCausalLM(MistralConfig(**TEXT)).eval()
    mistral.save_pretrained(base, safe_serialization=True)
    _tokenizer(base)
    lora = tmp_path / "rs-llava-lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    (lora / "config.json").write_text(json.dumps(_mm_config("llava_mistral")))
    g = torch.Generator().manual_seed(6)
    pairs = {}
    for i in range(TEXT["num_hidden_layers"]):
        stem = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        pairs[f"{stem}.lora_A.weight"] = torch.randn(4, 64, generator=g)
        pairs[f"{stem}.lora_B.weight"] = torch.randn(64, 4, generator=g)
    save_file(pairs, str(lora / "adapter_model.safetensors"))
    projector = _projector("base_model.model.model.", torch.Generator().manual_seed(7))
    torch.save(projector, lora / "non_lora_trainables.bin")

    out = convert_rsllava(lora, base, tmp_path / "clip", tmp_path / "out")
    weights = dict(read_tensors(out))
    for i in range(TEXT["num_hidden_layers"]):
        w = mistral.state_dict()[f"model.layers.{i}.self_attn.q_proj.weight"]
        stem = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        expected = w + (8 / 4) * pairs[f"{stem}.lora_B.weight"] @ pairs[f"{stem}.lora_A.weight"]
        got = weights[f"language_model.model.layers.{i}.self_attn.q_proj.weight"]
        assert torch.allclose(got, expected, atol=1e-6)
    k = weights["language_model.model.layers.0.self_attn.k_proj.weight"]
    assert torch.equal(k, mistral.state_dict()["model.layers.0.self_attn.k_proj.weight"])
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["model_type"] == "mistral" and config["image_seq_length"] == 64
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(8))
    ref = _reference_features(
        clip.state_dict(), 336, clip.state_dict()["embeddings.position_embedding.weight"], projector, pixels
    )
    assert (_converted_features(out, pixels) - ref).abs().max() <= 1e-6
    assert json.loads((out / "geovlm.json").read_text())["family"] == "rsllava"


def test_pickled_llava_hf_folder_is_refused_then_converted(tmp_path):
    from safetensors.torch import load_file

    from geovlm.models.checkpoints import CheckpointError, inspect_checkpoint
    from geovlm.models.convert import ConversionError, convert_safetensors
    from geovlm.models.demo_model import write_demo_model

    demo = write_demo_model(tmp_path / "demo")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    state = load_file(demo / "model.safetensors")
    torch.save(state, pickled / "pytorch_model.bin")
    for f in demo.iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CheckpointError, match="pickled weights.*geovlm convert safetensors"):
        inspect_checkpoint(pickled)
    out = convert_safetensors(pickled, tmp_path / "fixed")
    assert inspect_checkpoint(out).family == "geochat"
    assert not list(out.glob("*.bin"))
    with pytest.raises(ConversionError, match="not empty"):
        convert_safetensors(pickled, tmp_path / "fixed")


def test_only_weight_pickles_are_read_and_a_refused_one_is_a_clear_error(tmp_path):
    import argparse

    from geovlm.cli import main
    from geovlm.models.convert import ConversionError, convert_safetensors, read_tensors

    src = tmp_path / "src"
    src.mkdir()
    torch.save({"w": torch.ones(2, 2)}, src / "pytorch_model.bin")
    torch.save(argparse.Namespace(lr=1e-4), src / "training_args.bin")  # the Trainer leaves one beside the weights
    assert list(dict(read_tensors(src))) == ["w"]
    (src / "pytorch_model.bin").write_bytes((src / "training_args.bin").read_bytes())
    with pytest.raises(ConversionError, match="pytorch_model.bin.*weights_only"):
        dict(read_tensors(src))
    with pytest.raises(ConversionError, match="weights_only"):
        convert_safetensors(src, tmp_path / "out")
    assert main(["convert", "safetensors", "--src", str(src), "--out", str(tmp_path / "out2")]) == 2


def test_cls_patch_features_count_the_cls_token(tmp_path):
    from geovlm.models.checkpoints import load_vision_model
    from geovlm.models.convert import convert_geochat
    from geovlm.models.encoder_export import torch_image_features

    _write_clip(tmp_path / "clip")
    _geochat_source(tmp_path / "src", mm_vision_select_feature="cls_patch")
    out = convert_geochat(tmp_path / "src", tmp_path / "clip", tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["vision_feature_select_strategy"] == "full"
    features = torch_image_features(load_vision_model(out), torch.zeros(1, 3, 504, 504))
    assert features.shape[1] == config["image_seq_length"] == 12 * 12 + 1


@pytest.mark.parametrize("text, message", [
    ("{not json", "adapter_config.json is not readable JSON"),
    ("[1, 2]", "adapter_config.json holds a JSON list, not the object a config is"),
    ('{"lora_alpha": 16}', 'adapter_config.json gives no LoRA rank and alpha as numbers'),
    ('{"r": 0, "lora_alpha": 16}', "LoRA rank r=0, not a positive number"),
])
def test_a_broken_config_is_one_line_not_a_traceback(tmp_path, capsys, text, message):
    from geovlm.cli import main

    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(text, encoding="utf-8")
    argv = ["convert", "rsllava", "--lora", str(lora), "--base", str(tmp_path / "base"), "--clip",
            str(tmp_path / "clip"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
