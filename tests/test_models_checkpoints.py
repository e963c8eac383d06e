"""Clear errors for checkpoint folders that cannot be loaded."""

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402

from geovlm.models.checkpoints import CheckpointError, inspect_checkpoint  # noqa: E402


@pytest.fixture()
def copy(tmp_path_factory, tmp_path):
    src = ms.demo_dir(tmp_path_factory)
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.onnx"))
    return dst


def test_demo_checkpoint_is_valid(copy):
    info = inspect_checkpoint(copy)
    assert info.family == "geochat" and info.random_stand_in and info.name == "geovlm-demo-random"
    assert inspect_checkpoint(copy, family="skysense").family == "skysensegpt"  # alias, explicit override


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoint(tmp_path / "nope")


def test_bin_only_weights_are_refused_with_the_way_out(copy):
    (copy / "model.safetensors").rename(copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"only pickled weights.*geovlm convert safetensors"):
        inspect_checkpoint(copy)


def test_missing_tokenizer(copy):
    (copy / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer"):
        inspect_checkpoint(copy)


def test_unknown_or_foreign_family(copy):
    meta = json.loads((copy / "geovlm.json").read_text())
    (copy / "geovlm.json").write_text(json.dumps(dict(meta, family="dinosaur")))
    with pytest.raises(CheckpointError, match="unknown model family"):
        inspect_checkpoint(copy)
    with pytest.raises(CheckpointError, match="not served by the LLaVA engine"):
        inspect_checkpoint(copy, family="qwen2vl")
    (copy / "geovlm.json").unlink()
    with pytest.raises(CheckpointError, match="--family"):
        inspect_checkpoint(copy)


def test_original_layout_and_other_model_types(copy):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(dict(config, model_type="geochat")))
    with pytest.raises(CheckpointError, match="geovlm convert geochat"):
        inspect_checkpoint(copy)
    (copy / "config.json").write_text(json.dumps(dict(config, model_type="qwen2_vl")))
    with pytest.raises(CheckpointError, match="'qwen2_vl' model"):
        inspect_checkpoint(copy)
    (copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        inspect_checkpoint(copy)


def test_loading_never_runs_remote_code(copy, monkeypatch):
    from transformers import LlavaForConditionalGeneration

    from geovlm.models.checkpoints import load_model

    seen = {}
    real = LlavaForConditionalGeneration.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", classmethod(spy))
    load_model(copy)
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False and seen["local_files_only"]


def test_bfloat16_checkpoint_is_read_and_hashed_once_and_loads(copy, monkeypatch):
    """One reading of the folder and one hash per pipeline load (safetensors' numpy reader has no bfloat16: the
    hash reads raw bytes); export, runtime check and /v1/models all take that one CheckpointInfo."""
    import torch

    from geovlm.models import checkpoints, pipeline

    fp32_hash = checkpoints.encoder_weights_hash(copy)
    checkpoints.load_model(copy).to(torch.bfloat16).save_pretrained(copy, safe_serialization=True)
    real_hash, real_inspect, hashes, reads = checkpoints.encoder_weights_hash, checkpoints.inspect_checkpoint, [], []
    monkeypatch.setattr(checkpoints, "encoder_weights_hash", lambda *a: hashes.append(a) or real_hash(*a))
    monkeypatch.setattr(checkpoints, "inspect_checkpoint", lambda *a: reads.append(a) or real_inspect(*a))
    pipe = pipeline.VlmPipeline.load(copy, device="cpu", providers=["CPUExecutionProvider"])
    assert len(hashes) == 1 and len(reads) == 1
    assert pipe.encoder.source_hash == real_hash(copy) != fp32_hash
    assert pipe.encode([ms.random_image(0)]).shape == (1, 64, 64)
    info = pipe.info()
    assert (info["architecture"], info["family"], info["input_size"], info["fit"]) == ("llava", "geochat", 504, "pad")
    assert (info["image_tokens"], info["hidden_size"]) == (64, 64)
