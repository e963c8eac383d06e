"""A tiny, seeded, randomly initialised llava-hf checkpoint: the stand-in model for demos and tests.

Its weights are random: whatever it writes is noise in the shape of an answer. Everything that shows
its output must say so (`geovlm.json` carries `random_stand_in: true`).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from ..core.profiles import get_profile

DEMO_NAME = "geovlm-demo-random"
GRID = 8  # patches per side: 64 image tokens whatever the family's input size

# Built-in text the demo tokenizer is trained on: prompt words and the answer shapes of the families.
_CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: <image>\nDescribe the image in detail.\n ASSISTANT: The image shows a harbour with several ships.",
    "[grounding]Describe the image [refer] Give me the location of <p> the white plane </p>",
    "[identify] What is the object present at [detection]Can you locate all the ships in the image?",
    "<p>1 large harbor</p> {<36><56><76><80>|<90>} <p>1 white plane</p> {<49><48><57><56>|<90>}<delim>{<35><54>}",
    "There is 1 ship in the image: <rbox>({<50.00><50.00><7.81><1.95>|<30>})</rbox>",
    "<ref>cars</ref><rbox>({<12.50><40.00><3.00><1.50>|<90>})</rbox> <rel>parked alongside with</rel>",
    "airplane boat taxiway tank ship crane car apron dock storehouse truck terminal runway bridge road river",
    "field forest building roof parking lot tennis court baseball diamond stadium roundabout intersection",
    "0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 70 80 90 100. , : ; ! ? ( ) [ ] { } < > | /",
    "The scene is an urban area with dense residential buildings, green trees and a straight road.",
    "Answer the question using a single word or phrase. Classify the image from the following classes.",
]
SPECIAL = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]


def _train_tokenizer(vocab_size: int):
    """A BPE tokenizer trained here on `_CORPUS` (Llama-style `▁` word marks, `<s>` prepended); characters the
    corpus never shows become `<unk>`, so the random model writes readable word pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))  # nosec B106  # a token, not a password
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def demo_config(family: str = "geochat", vocab_size: int = 512, vision_hidden: int = 32, text_hidden: int = 64):
    """The LlavaConfig of the demo model for `family` (its input size, 64 image tokens)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    size = get_profile(family).input_size
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=size,
        patch_size=size // GRID,
        projection_dim=vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=4,
        initializer_range=0.2,  # peaked logits, so greedy tokens depend on the image and rarely tie
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=SPECIAL.index("<image>"),
        pad_token_id=SPECIAL.index("<pad>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=GRID * GRID,
        projector_hidden_act="gelu",
        initializer_range=0.2,
    )


@contextmanager
def no_progress_bars():
    """Within the block, transformers (and huggingface_hub) draw no tqdm progress bars on stderr, such as
    `save_pretrained`'s "Writing model shards" for a model of one file written in milliseconds; the previous
    setting is restored after (`transformers.utils.logging.disable_progress_bar`, a process-wide switch)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    was_enabled, hub_was_disabled = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        if hub_was_disabled:
            disable_progress_bars()


def write_demo_model(out_dir, seed: int = 0, family: str = "geochat") -> Path:
    """Write the demo checkpoint (config, safetensors weights, tokenizer, geovlm.json) into `out_dir`, without
    progress bars (`no_progress_bars`)."""
    with no_progress_bars():
        return _write_demo_model(Path(out_dir), seed, family)


def _write_demo_model(out: Path, seed: int, family: str) -> Path:
    import torch
    from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(vocab_size=400)
    for i, name in enumerate(SPECIAL):
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"special token {name} got id {tok.token_to_id(name)}, not {i}")
    config = demo_config(family, vocab_size=tok.get_vocab_size())
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = SPECIAL.index("<pad>")
    model.save_pretrained(out, safe_serialization=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",  # nosec B106  # tokens, not passwords
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},  # nosec B105
    )
    fast.padding_side = "left"
    fast.save_pretrained(out)
    meta = {
        "family": family,
        "name": DEMO_NAME,
        "random_stand_in": True,
        "licence": f"none: random weights generated locally, seed {seed}",
        "seed": seed,
    }
    (out / "geovlm.json").write_text(json.dumps(meta, indent=2))
    return out
