"""MiniGPT-v2-architecture checkpoints (MiniGPT-v2, SkyEyeGPT, RS fine-tunes): the vision side and the loaders of
a folder written by `geovlm convert minigptv2` (models/convert_minigptv2.py).

The architecture, from the MiniGPT-v2 paper (arXiv 2310.09478) and its code (`minigpt4/models/eva_vit.py`,
`minigpt_v2.py`, `minigpt_base.py`, `base_model.py`):

- EVA-CLIP ViT-g/14 (`create_eva_vit_g`): a 14 px patch convolution, a CLS token, absolute position embeddings
  (resized bicubically, align_corners=False, from the 16x16 grid of 224 px to 32x32 for 448 px), 39 pre-norm
  blocks (EVA-g has 40; the last is dropped as in BLIP-2), attention with learnt q and v biases and none on k,
  softmax(q k^T / sqrt(88)), an MLP of 6144 with exact GELU, LayerNorms of eps 1e-6, no final norm.
- `ln_vision`: a LayerNorm of the default eps 1e-5 on the ViT's output (frozen in training: its weights are those
  the checkpoint holds, else the identity it was created with).
- The CLS token dropped, every 4 consecutive tokens concatenated (a row-major view: [n, 1024, 1408] ->
  [n, 256, 5632]) and `llama_proj`, one Linear(5632, LLaMA width).
- LLaMA-2-chat with the LoRA merged into its weights, loaded as a plain `LlamaForCausalLM`.

Tensor names in `vision.safetensors` are those of the original model's state dict (`visual_encoder.*`,
`ln_vision.*`, `llama_proj.*`), so the conversion maps the original files by prefix only.

Why not timm's `Eva`: timm imports torchvision unconditionally, and torchvision's PyPI wheels matching
torch==2.13.0 are CUDA builds that fail to load beside the CPU torch the engine pins (and installing timm
unpinned replaces that torch with a CUDA one). The few EVA modules are therefore defined here, and
tests/minigpt_reference.py checks them block by block against a separate functional transcription.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Tuple

from .checkpoints import MINIGPT_VISION_CONFIG, CheckpointError, from_local_folder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Blip2ImageEvalProcessor's normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionConfig:
    """Sizes of the MiniGPT-v2 vision side; the defaults are MiniGPT-v2's (EVA ViT-g/14 at 448 px, LLaMA-2-7B)."""

    image_size: int = 448  # px, square (the processor stretches to it)
    patch_size: int = 14
    hidden_size: int = 1408
    depth: int = 39  # blocks kept
    num_heads: int = 16
    mlp_hidden: int = 6144  # int(1408 * 4.3637)
    eps: float = 1e-6  # the ViT's LayerNorms
    ln_vision_eps: float = 1e-5  # ln_vision: torch's default
    merge_tokens: int = 4  # consecutive tokens concatenated before llama_proj
    lm_hidden: int = 4096
    image_token_id: int = 0  # the prompt id marking the image's positions (LLaMA's <unk>, never produced)
    mean: Tuple[float, float, float] = CLIP_MEAN
    std: Tuple[float, float, float] = CLIP_STD
    weights: str = "vision.safetensors"
    architecture: str = "eva_vit_g_minigptv2"

    @property
    def grid(self) -> int:
        """Patches along a side of the input: image_size // patch_size."""
        return self.image_size // self.patch_size

    @property
    def image_tokens(self) -> int:
        """Positions the image fills in the prompt: grid² patches, `merge_tokens` concatenated into one."""
        return self.grid * self.grid // self.merge_tokens

    @classmethod
    def from_dict(cls, data: dict) -> VisionConfig:
        """From a vision_config.json's values; keys that are not fields are ignored."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)

    def write(self, folder: Path) -> None:
        """Write every field as `folder`/vision_config.json."""
        (Path(folder) / MINIGPT_VISION_CONFIG).write_text(json.dumps(asdict(self), indent=2))


def _modules():
    """The torch modules, defined on first use so that importing this file does not import torch."""
    import torch
    from torch import nn

    class EvaAttention(nn.Module):
        """EVA attention: one qkv projection without bias, plus learnt q and v biases (k has none)."""

        def __init__(self, dim: int, heads: int):
            super().__init__()
            self.heads = heads
            self.scale = (dim // heads) ** -0.5
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            n, length, dim = x.shape
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
            qkv = nn.functional.linear(x, self.qkv.weight, bias)
            q, k, v = qkv.reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
            weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            return self.proj((weights @ v).transpose(1, 2).reshape(n, length, dim))

    class EvaMlp(nn.Module):
        def __init__(self, dim: int, hidden: int):
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class EvaBlock(nn.Module):
        def __init__(self, config: VisionConfig):
            super().__init__()
            dim = config.hidden_size
            self.norm1 = nn.LayerNorm(dim, eps=config.eps)
            self.attn = EvaAttention(dim, config.num_heads)
            self.norm2 = nn.LayerNorm(dim, eps=config.eps)
            self.mlp = EvaMlp(dim, config.mlp_hidden)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class PatchEmbed(nn.Module):
        def __init__(self, config: VisionConfig):
            super().__init__()
            self.proj = nn.Conv2d(3, config.hidden_size, config.patch_size, stride=config.patch_size)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class EvaViT(nn.Module):
        """EVA ViT-g up to the kept blocks: [n, 3, size, size] -> [n, 1 + grid^2, hidden] (CLS first)."""

        def __init__(self, config: VisionConfig):
            super().__init__()
            self.patch_embed = PatchEmbed(config)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
            self.pos_embed = nn.Parameter(torch.zeros(1, config.grid * config.grid + 1, config.hidden_size))
            self.blocks = nn.ModuleList(EvaBlock(config) for _ in range(config.depth))

        def forward(self, pixel_values):
            x = self.patch_embed(pixel_values)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
            for block in self.blocks:
                x = block(x)
            return x

    class MiniGptVision(nn.Module):
        """pixel_values [n, 3, size, size] (normalised) -> image features [n, image_tokens, lm_hidden] float32:
        MiniGPTv2.encode_img in one module (ViT, ln_vision, CLS dropped, 4-token merge, llama_proj)."""

        def __init__(self, config: VisionConfig):
            super().__init__()
            self.config = config
            self.visual_encoder = EvaViT(config)
            self.ln_vision = nn.LayerNorm(config.hidden_size, eps=config.ln_vision_eps)
            self.llama_proj = nn.Linear(config.hidden_size * config.merge_tokens, config.lm_hidden)

        def forward(self, pixel_values):
            dtype = self.llama_proj.weight.dtype
            hidden = self.ln_vision(self.visual_encoder(pixel_values.to(dtype)))[:, 1:]
            n, tokens, width = hidden.shape
            merged = hidden.reshape(n, tokens // self.config.merge_tokens, width * self.config.merge_tokens)
            return self.llama_proj(merged).float()

    return MiniGptVision


def build_vision(config: VisionConfig):
    """A MiniGptVision of `config` with freshly initialised weights (torch's defaults), in eval mode."""
    return _modules()(config).eval()


def load_vision(checkpoint):
    """The MiniGptVision of a MiniGPT-v2 CheckpointInfo, fp32 on the CPU, from its vision safetensors (strict:
    a missing or unexpected tensor is a CheckpointError naming it)."""
    from safetensors.torch import load_file

    config = VisionConfig.from_dict(checkpoint.vision_config)
    module = build_vision(config)
    state = {k: v.float() for k, v in load_file(str(checkpoint.path / config.weights)).items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the vision weights of {checkpoint.path} do not fit its vision config: {exc}") from None
    return module.eval()


def load_language_model(model_dir, dtype=None, device: str = "cpu"):
    """The LlamaForCausalLM of a MiniGPT-v2 folder (LoRA already merged), from safetensors, eval mode on `device`."""
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = from_local_folder(LlamaForCausalLM, model_dir, dtype=dtype or torch.float32, use_safetensors=True)
    return model.to(device).eval()
