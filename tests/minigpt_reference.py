"""An independent reference of MiniGPT-v2's forward, transcribed in plain torch functions from the original code
(minigpt4/models/eva_vit.py, minigpt_v2.py encode_img, minigpt_base.py get_context_emb and tokenize_conversation,
blip_processors.py Blip2ImageEvalProcessor) and reading the *original* input files (EVA state dict, training
checkpoint with unmerged LoRA, LLaMA folder), so that it shares no code with GeoVLM's conversion or modules.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def processor(image: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """Blip2ImageEvalProcessor: Resize((size, size), BICUBIC) of the PIL image, ToTensor, Normalize -> [3, s, s]."""
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(resized).permute(2, 0, 1)
    return (tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _interpolate_pos_embed(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """eva_vit.interpolate_pos_embed: extra (CLS) token kept, the patch grid resized bicubically."""
    pos = pos.float()
    dim = pos.shape[-1]
    old = int((pos.shape[-2] - 1) ** 0.5)
    if old == new_grid:
        return pos
    tokens = pos[:, 1:].reshape(-1, old, old, dim).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return torch.cat((pos[:, :1], tokens.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)


def eva_forward(eva: dict, pixels: torch.Tensor, heads: int, keep: int):
    """create_eva_vit_g's forward with `keep` blocks: (output [n, 1 + grid^2, dim], hidden after each block)."""
    weight = eva["patch_embed.proj.weight"]
    patch = weight.shape[-1]
    x = F.conv2d(pixels, weight, eva["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    n, length, dim = x.shape
    x = torch.cat((eva["cls_token"].expand(n, -1, -1), x), dim=1)
    x = x + _interpolate_pos_embed(eva["pos_embed"], int(length ** 0.5))
    hiddens = []
    for i in range(keep):
        block = {k.split(".", 2)[2]: v for k, v in eva.items() if k.startswith(f"blocks.{i}.")}
        p = block.__getitem__
        h = F.layer_norm(x, (dim,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        bias = torch.cat((p("attn.q_bias"), torch.zeros_like(p("attn.v_bias")), p("attn.v_bias")))
        qkv = F.linear(h, p("attn.qkv.weight"), bias).reshape(n, length + 1, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        h = F.linear((attn @ v).transpose(1, 2).reshape(n, length + 1, -1), p("attn.proj.weight"), p("attn.proj.bias"))
        x = x + h
        h = F.layer_norm(x, (dim,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        h = F.gelu(F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias")))
        h = F.linear(h, p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        x = x + h
        hiddens.append(x)
    return x, hiddens


def encode_img(eva: dict, trained: dict, pixels: torch.Tensor, heads: int):
    """MiniGPTv2.encode_img: ln_vision (a fresh LayerNorm unless the checkpoint holds one), CLS dropped, 4 tokens
    concatenated by a view, llama_proj. The last EVA block is not built (create_eva_vit_g depth 39 of 40)."""
    blocks = 1 + max(int(k.split(".")[1]) for k in eva if k.startswith("blocks."))
    out, hiddens = eva_forward(eva, pixels, heads, blocks - 1)
    dim = out.shape[-1]
    ln_w = trained.get("ln_vision.weight", torch.ones(dim))
    ln_b = trained.get("ln_vision.bias", torch.zeros(dim))
    embeds = F.layer_norm(out, (dim,), ln_w, ln_b)[:, 1:, :]
    bs, pn, hs = embeds.shape
    embeds = embeds.view(bs, int(pn / 4), int(hs * 4))
    return F.linear(embeds, trained["llama_proj.weight"], trained["llama_proj.bias"]), hiddens


def lora_llama(llama_dir, trained: dict, alpha: float):
    """The base LlamaForCausalLM with each LoRA pair applied at run time (PEFT's forward: W x + alpha/r B A x)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(llama_dir), local_files_only=True).eval()  # nosec B615
    modules = dict(model.named_modules())
    pairs = {}
    for key, tensor in trained.items():
        if ".lora_" in key:
            stem, rest = key.split(".lora_")
            stem = stem.removeprefix("llama_model.base_model.model.")
            pairs.setdefault(stem, {})[rest[0]] = tensor
    for stem, pair in pairs.items():
        a, b = pair["A"], pair["B"]
        scale = alpha / a.shape[0]
        modules[stem].register_forward_hook(lambda mod, inp, out, a=a, b=b, s=scale: out + s * (inp[0] @ a.T @ b.T))
    return model


IMAGE = None  # where the image's embeddings go in a list of token-id pieces


def slow_tokenize(tokenizer, text: str) -> list:
    """Ids of `text` (no BOS added) as MiniGPT-4's tokenizer made them: LlamaTokenizer(use_fast=False) of
    transformers 4.30 (environment.yml) cuts the text at the special tokens `<s>`/`</s>` and encodes each text in
    between with sentencepiece, which gives each its word mark (the "legacy" behaviour)."""
    ids = []
    for chunk in re.split(r"(<s>|</s>)", text):
        if chunk in ("<s>", "</s>"):
            ids.append(tokenizer.convert_tokens_to_ids(chunk))
        elif chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
    return ids


def conversation_pieces(tokenizer, turns, prompt_template="[INST] {} [/INST]", end_sym="</s>") -> list:
    """A conversation [(user, q1), (assistant, a1), ..., (user, qn)] as MiniGPT-v2 was trained on it, ready for
    its answer: multitask_conversation.py puts `<Img><ImageHere></Img> ` before the first question only;
    preparing_embedding formats every question with prompt_template (minigptv2_finetune.yaml: end_sym "</s>");
    prompt_wrap tokenizes the first question around the image, forward puts BOS before it; tokenize_conversation
    appends each answer + end_sym and each later question as bos_token + question. The spacing of a question is
    the inference one (Chat.ask: one space after </Img>; the training files add a trailing space). Token-id lists,
    IMAGE where the image goes."""
    questions = [t for r, t in turns[0::2]]
    answers = [t for r, t in turns[1::2]]
    first = prompt_template.format(f"<Img><ImageHere></Img> {questions[0]}")
    before, after = first.split("<ImageHere>")
    pieces = [[tokenizer.bos_token_id] + slow_tokenize(tokenizer, before), IMAGE, slow_tokenize(tokenizer, after)]
    for answer, question in zip(answers, questions[1:]):
        pieces.append(slow_tokenize(tokenizer, answer + end_sym))
        pieces.append(slow_tokenize(tokenizer, tokenizer.bos_token + prompt_template.format(question)))
    return pieces


def greedy(model, tokenizer, prompt: str, image_embeds: torch.Tensor, max_new_tokens: int, eos: int = 2):
    """get_context_emb (the prompt split at <ImageHere>, <s> on the first piece only) then `greedy_pieces`."""
    segments = prompt.split("<ImageHere>")
    pieces = []
    for i, seg in enumerate(segments):
        pieces.append(tokenizer(seg, add_special_tokens=i == 0).input_ids)
        if i < len(segments) - 1:
            pieces.append(IMAGE)
    return greedy_pieces(model, pieces, image_embeds, max_new_tokens, eos)


def greedy_pieces(model, pieces: list, image_embeds: torch.Tensor, max_new_tokens: int, eos: int = 2):
    """Greedy decoding of token-id pieces (IMAGE: the image's [1, n, width] embeddings) with the whole sequence
    recomputed at every step; the generated ids (eos excluded)."""
    embed = model.get_input_embeddings()
    embeds = torch.cat([image_embeds if p is IMAGE else embed(torch.tensor([p])) for p in pieces], dim=1)
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(inputs_embeds=embeds).logits[0, -1].argmax())
            if token == eos:
                break
            out.append(token)
            embeds = torch.cat([embeds, embed(torch.tensor([[token]]))], dim=1)
    return out
