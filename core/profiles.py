"""Model-family profiles: how each family is prompted and what its numbers mean.

A profile is plain data. Every field can be overridden (`Profile.with_overrides`), since checkpoints
fine-tuned on other conventions exist. Facts come from the families' public code and model cards.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# The first turn of LLaVA's v1 conversation (conv_mode llava_v1 in LLaVA's llava/conversation.py; llava-hf's
# LLaVA-1.5 model card writes the same), the one that carries the image: LLaVA-1.5, GeoChat, SkySenseGPT, RS-LLaVA.
LLAVA_V1_PROMPT = "USER: <image>\n{question} ASSISTANT:"
# Qwen2-VL's and Qwen2.5-VL's ChatML: the user's turn with the image, then the assistant's turn opened.
QWEN_CHATML_PROMPT = (
    "<|im_start|>user\n<|vision_start|><image><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
)

# How the exported image was fitted into the model's input.
FIT_MODES = ("pad", "stretch", "crop", "dynamic")
# What the numbers in a box mean.
COORD_MODES = ("percent", "bins", "input_pixels")
# The syntax a family writes boxes in (the parser's grammar).
BOX_SYNTAXES = ("geochat", "skysense", "earthdial", "minigpt", "llava", "qwen2", "qwen25", "florence2", "none")
# Box shapes: corners (x1, y1, x2, y2) or centre-size (cx, cy, w, h).
BOX_LAYOUTS = ("xyxy", "cxcywh")
# How a written angle becomes a turn of the box about its centre (see Profile.angle_mode and
# bench/bench_conventions.py for the measurement that chose each family's mode).
ANGLE_MODES = ("offset", "nearest_axis")


@dataclass(frozen=True)
class Profile:
    """Everything GeoVLM needs to know about a model family: its prompt and task words, how its preprocessing fits an
    image to the input (`fit`, `input_size`: `core.georef.fit_plan`), and how its answers write boxes (`box_syntax`,
    `box_layout`) and what their numbers mean (`coord_mode`, `coord_scale`, `coord_offset`:
    `core.georef.model_to_input`; angles: `angle_mode`, `angle_sense`). Each family's values follow its own
    repository's code and answer format (shared/reference/answer-formats.md; comments in the table below).
    ValueError for a field outside its allowed values."""

    name: str
    title: str
    prompt_template: str  # {question} is replaced; {image} marks where the image goes
    system: str = ""
    task_words: Dict[str, str] = field(default_factory=dict)  # task -> format string with {question}
    input_size: Optional[int] = 336  # square side in pixels; None for dynamic resolution
    fit: str = "pad"
    pad_color: Tuple[int, int, int] = (122, 116, 104)  # CLIP mean as 0-255
    coord_mode: str = "percent"
    coord_scale: float = 100.0  # the value that means the full width/height
    coord_offset: float = 0.0  # added to a value before scaling (0.5 for bin centres)
    box_syntax: str = "none"
    box_layout: str = "xyxy"
    # +1: a positive angle turns the box counter-clockwise as displayed (y down); -1: clockwise.
    angle_sense: int = 1
    # "offset": the turn is angle_sense * (angle - upright_angle); upright_angle is the written angle that
    # means "not rotated". SkySenseGPT needs 0: its upright boxes come as 90 with w and h swapped, which a
    # 90-degree turn of (w, h) gives.
    # "nearest_axis": the turn is angle_sense * (angle - the nearest multiple of 90), in [-45, 45]: 0 and 90
    # (and 180, 270) all mean an unrotated box with its corners as written. EarthDial writes 90 for upright
    # boxes on optical images and 0 on SAR ones; bench/bench_conventions.py measures the choice. There,
    # upright_angle only says how a region is written (core/regions.py): in [upright - 45, upright + 45).
    angle_mode: str = "offset"
    upright_angle: float = 0.0
    dynamic_factor: int = 28
    dynamic_min_pixels: int = 4 * 28 * 28
    dynamic_max_pixels: int = 16384 * 28 * 28
    stop: Tuple[str, ...] = ("</s>",)
    licence_note: str = ""
    # A conversation of several turns is: prompt(q1) + " " + a1 + answer_end + turn_template(q2) + ...
    # answer_end None: the first stop string; turn_template None: prompt_template without its image, the system
    # only once at the start. Both None give LLaVA's v1 conversation ("... ASSISTANT: a1</s>USER: q2 ASSISTANT:").
    answer_end: Optional[str] = None
    turn_template: Optional[str] = None

    def __post_init__(self):
        if self.fit not in FIT_MODES:
            raise ValueError(f"fit must be one of {FIT_MODES}, not {self.fit!r}")
        if self.coord_mode not in COORD_MODES:
            raise ValueError(f"coord_mode must be one of {COORD_MODES}, not {self.coord_mode!r}")
        if self.box_syntax not in BOX_SYNTAXES:
            raise ValueError(f"box_syntax must be one of {BOX_SYNTAXES}, not {self.box_syntax!r}")
        if self.box_layout not in BOX_LAYOUTS:
            raise ValueError(f"box_layout must be one of {BOX_LAYOUTS}, not {self.box_layout!r}")
        if self.angle_mode not in ANGLE_MODES:
            raise ValueError(f"angle_mode must be one of {ANGLE_MODES}, not {self.angle_mode!r}")
        if self.angle_sense not in (1, -1):
            raise ValueError("angle_sense must be 1 (counter-clockwise) or -1 (clockwise)")
        if self.fit == "dynamic" and self.input_size is not None:
            raise ValueError("a dynamic-resolution profile has input_size None")
        if self.fit != "dynamic" and not self.input_size:
            raise ValueError("a fixed-size profile needs input_size")
        later = self.turn_template
        if later is not None and ("{question}" not in later or "<image>" in later):
            raise ValueError("turn_template needs {question} and no <image> (the image is in the first turn only)")

    @property
    def tasks(self) -> Tuple[str, ...]:
        """The task names this family has a task word for, in the profile's order."""
        return tuple(self.task_words)

    def question(self, task: str, text: str) -> str:
        """The question with the family's task word for `task` (vqa and caption may have none). ValueError for a
        task the family does not have."""
        if task not in self.task_words:
            raise ValueError(f"{self.name} has no task {task!r}; it knows {', '.join(self.task_words)}")
        return self.task_words[task].format(question=text)

    def prompt(self, question: str, task: Optional[str] = None) -> str:
        """The full prompt text for one turn, with `<image>` where the image tokens go."""
        if task is not None:
            question = self.question(task, question)
        body = self.prompt_template.format(question=question)
        return f"{self.system} {body}" if self.system else body

    def follow_up(self) -> Tuple[str, str]:
        """(answer_end, turn_template): the text that closes an earlier answer and the template of a later user
        turn (with `{question}`, without the image), their defaults resolved (see the fields)."""
        end = self.answer_end if self.answer_end is not None else (self.stop[0] if self.stop else "")
        later = self.turn_template
        if later is None:
            later = self.prompt_template.replace("<image>\n", "").replace("<image>", "")
        return end, later

    def with_overrides(self, **changes) -> Profile:
        """A copy with some fields replaced; unknown names raise a clear error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown profile field(s): {', '.join(unknown)}")
        if "pad_color" in changes:
            changes["pad_color"] = tuple(int(v) for v in changes["pad_color"])
        if "stop" in changes and isinstance(changes["stop"], str):
            changes["stop"] = (changes["stop"],)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field by name (`dataclasses.asdict`)."""
        return dataclasses.asdict(self)


_GEOCHAT_TASKS = {
    "grounding": "[grounding]{question}",
    "refer": "[refer] Give me the location of <p> {question} </p>",
    "identify": "[identify] What is the object present at {question}",
    "caption": "{question}",
    "vqa": "{question} Answer the question using a single word or phrase.",
    "classify": "{question} Classify the image from the following classes. Answer in one word or a short phrase.",
}

_PROFILES = {
    "llava15": Profile(
        name="llava15",
        title="LLaVA-1.5 (llava-hf)",
        prompt_template=LLAVA_V1_PROMPT,
        task_words={"caption": "{question}", "vqa": "{question}"},
        input_size=336,
        fit="pad",
        coord_scale=1.0,
        box_syntax="llava",
        licence_note="LLaVA-1.5 weights follow the Llama 2 community licence.",
    ),
    "geochat": Profile(
        name="geochat",
        title="GeoChat",
        system=LLAVA_SYSTEM,
        prompt_template=LLAVA_V1_PROMPT,
        task_words=dict(_GEOCHAT_TASKS),
        input_size=504,
        fit="pad",
        box_syntax="geochat",
        angle_sense=1,
        # GeoChat's own answers write |<90> for most upright boxes and EarthDial, trained on its format,
        # writes both 0 and 90 for them: see the README's convention study (no GeoChat file is shared).
        angle_mode="nearest_axis",
        upright_angle=90.0,  # how its questions write an unrotated region (core/regions.py): |<90>
        licence_note="GeoChat is released for research use; check its model card.",
    ),
    "skysensegpt": Profile(
        name="skysensegpt",
        title="SkySenseGPT (FIT-RS)",
        system=LLAVA_SYSTEM,
        prompt_template=LLAVA_V1_PROMPT,
        task_words={
            **_GEOCHAT_TASKS,
            "detection": "[detection]{question}",
            "scene_graph": "[detection]{question}",
        },
        input_size=504,
        fit="stretch",
        box_syntax="skysense",
        box_layout="cxcywh",
        angle_sense=-1,
        licence_note="SkySenseGPT weights are for non-commercial research use; check its model card.",
    ),
    "rsllava": Profile(
        name="rsllava",
        title="RS-LLaVA",
        prompt_template=LLAVA_V1_PROMPT,
        task_words={"caption": "{question}", "vqa": "{question}"},
        input_size=336,
        fit="pad",
        box_syntax="none",
        licence_note="RS-LLaVA is a LoRA on a Mistral-7B base; check both licences.",
    ),
    "earthdial": Profile(
        name="earthdial",
        title="EarthDial",
        prompt_template="{question}",
        task_words={
            "refer": "[refer] [hr_rgb_0.5] <image> \n Give me the location of <ref>{question}</ref>",
            "grounding": "[grounding] [hr_rgb_0.5] <image> \n {question}",
            "identify": "[identify] [hr_rgb_0.5] <image> \n What is the object present at <box>{question}</box>",
            "caption": "[caption] [hr_rgb_0.5] <image> \n {question}",
            "vqa": "[vqa] [hr_rgb_0.5] <image> \n {question}",
        },
        input_size=448,
        fit="stretch",
        box_syntax="earthdial",
        angle_sense=1,  # counter-clockwise on screen, as its own evaluator turns boxes
        # 0 and 90 both mean upright (90 on NWPU VHR-10, 0 on the SAR ships): bench/bench_conventions.py.
        angle_mode="nearest_axis",
        stop=("<|im_end|>",),
        licence_note="EarthDial is MIT-licensed (IBM Research).",
    ),
    "minigptv2": Profile(
        name="minigptv2",
        title="MiniGPT-v2",
        # minigptv2_eval.yaml's '[INST] {} [/INST]' around the image; the tokenizer adds <s> (minigpt_base.py)
        prompt_template="[INST] <Img><image></Img> {question} [/INST]",
        task_words={
            "grounding": "[grounding] {question}",
            "refer": "[refer] {question}",
            "identify": "[identify] {question}",
            "detection": "[detection] {question}",
            "caption": "[caption] {question}",
            "vqa": "[vqa] {question}",
        },
        input_size=448,
        fit="stretch",  # Blip2ImageEvalProcessor: Resize((448, 448), BICUBIC), no aspect kept
        box_syntax="minigpt",
        # Later turns as MiniGPT-v2 was trained on conversations (minigpt_base.py tokenize_conversation): each
        # answer + end_sym "</s>" (train_configs/minigptv2_finetune.yaml), then bos "<s>" + prompt_template of
        # the next question, which has no image (multitask_conversation.py puts <Img> in the first one only).
        answer_end="</s><s>",
        turn_template="[INST] {question} [/INST]",
        licence_note="MiniGPT-v2: BSD-3-Clause code and weights (Vision-CAIR); its LLaMA-2 base: Llama 2 licence.",
    ),
    "qwen2vl": Profile(
        name="qwen2vl",
        title="Qwen2-VL",
        prompt_template=QWEN_CHATML_PROMPT,
        task_words={
            "grounding": "{question} Give the bounding boxes of what you name.",
            "refer": "Locate {question} in the image.",
            "identify": "What is the object at {question}?",
            "detection": "Detect {question} in the image.",
            "caption": "{question}",
            "vqa": "{question}",
        },
        input_size=None,
        fit="dynamic",
        coord_mode="bins",
        coord_scale=1000.0,
        box_syntax="qwen2",
        stop=("<|im_end|>",),
        licence_note="Qwen2-VL: Apache-2.0 for most sizes; check the model card.",
    ),
    "qwen25vl": Profile(
        name="qwen25vl",
        title="Qwen2.5-VL",
        prompt_template=QWEN_CHATML_PROMPT,
        task_words={
            "grounding": "{question} Output the bounding boxes in JSON format.",
            "refer": "Locate {question}, output its bbox coordinates using JSON format.",
            "identify": "What is the object in the region {question}? Answer briefly.",
            "detection": "Locate every {question} in the image, output bbox coordinates in JSON format.",
            "caption": "{question}",
            "vqa": "{question}",
        },
        input_size=None,
        fit="dynamic",
        coord_mode="input_pixels",
        coord_scale=1.0,
        box_syntax="qwen25",
        stop=("<|im_end|>",),
        licence_note="Qwen2.5-VL: Apache-2.0 for 3B/7B, Qwen licence for 72B; check the model card.",
    ),
    "florence2": Profile(
        name="florence2",
        title="Florence-2",
        prompt_template="{question}",
        task_words={
            "detection": "<OD>",
            "grounding": "<CAPTION_TO_PHRASE_GROUNDING>{question}",
            "caption": "<MORE_DETAILED_CAPTION>",
            "refer": "<CAPTION_TO_PHRASE_GROUNDING>{question}",
            "identify": "<REGION_TO_DESCRIPTION>{question}",
        },
        input_size=768,
        fit="stretch",
        coord_mode="bins",
        coord_scale=1000.0,
        coord_offset=0.5,
        box_syntax="florence2",
        stop=("</s>",),
        licence_note="Florence-2 is MIT-licensed.",
    ),
}

# SkyEyeGPT (arXiv 2401.09712) is MiniGPT-v2 tuned on remote-sensing instructions: the same prompt, 448 px
# stretched input, boxes and conversation format. Its task words are MiniGPT-v2's: the examples of its repository
# (github.com/ZhanYang-nwpu/SkyEyeGPT, README figures images/RSVG.png, RSREG.png, RSPG.png, RSSC.png,
# some_sample.png) write "[caption] ...", "[vqa] ...", "[refer] ...", "[identify] ...", "[detection] ...";
# scene classification is asked as "[vqa] Classify the image within one of the given classes: ...".
_PROFILES["skyeyegpt"] = _PROFILES["minigptv2"].with_overrides(
    name="skyeyegpt",
    title="SkyEyeGPT",
    licence_note="SkyEyeGPT: check its model card; built on MiniGPT-v2 (BSD-3-Clause) and LLaMA-2 (Llama 2 licence).",
)

ALIASES = {
    "llava": "llava15",
    "llava-1.5": "llava15",
    "llava_1.5": "llava15",
    "rs-llava": "rsllava",
    "skysense": "skysensegpt",
    "fit-rs": "skysensegpt",
    "minigpt-v2": "minigptv2",
    "skyeye": "skyeyegpt",
    "qwen2-vl": "qwen2vl",
    "qwen2.5-vl": "qwen25vl",
    "florence-2": "florence2",
}


def family_names() -> Tuple[str, ...]:
    """The canonical names of the known families (not their aliases), in the table's order."""
    return tuple(_PROFILES)


def get_profile(name: str, **overrides) -> Profile:
    """The profile of a family by name or alias (any case), with optional field overrides
    (`Profile.with_overrides`). Raises ValueError for an unknown family or field."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _PROFILES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(_PROFILES)}")
    profile = _PROFILES[key]
    return profile.with_overrides(**overrides) if overrides else profile


# Fields whose values are a fixed set: an override outside it is refused naming the field and the values.
FIELD_CHOICES = {"fit": FIT_MODES, "coord_mode": COORD_MODES, "box_syntax": BOX_SYNTAXES, "box_layout": BOX_LAYOUTS,
                 "angle_mode": ANGLE_MODES, "angle_sense": (1, -1)}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _override_value(key: str, kind: str, value: str):
    """One override's text as the type of Profile's field `key` (annotation `kind`); ValueError naming the field
    and what it takes."""
    def refuse(takes: str):
        return ValueError(f"profile field {key!r} takes {takes}, not {value!r}")

    if key in FIELD_CHOICES:
        choices = FIELD_CHOICES[key]
        typed = next((c for c in choices if str(c) == value.strip().lstrip("+")), None)
        if typed is None:
            raise refuse(" or ".join(map(str, choices)) if len(choices) == 2 else f"one of {', '.join(choices)}")
        return typed
    if kind.startswith("Tuple[int"):
        count = None if "..." in kind else kind.count("int")
        try:
            numbers = tuple(int(v) for v in value.split(","))
        except ValueError:
            numbers = ()
        if not numbers or (count is not None and len(numbers) != count):
            raise refuse(f"{count or 'some'} whole numbers separated by commas (e.g. 122,116,104)")
        return numbers
    if kind.startswith("Tuple[str"):
        return tuple(v for v in value.split(",") if v)
    if kind.startswith("Dict["):
        try:
            mapping = json.loads(value)
        except ValueError:
            mapping = None
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise refuse('a JSON object of task -> text with {question}, e.g. {"vqa": "{question}"}')
        return mapping
    if kind == "bool":
        if value.lower() not in _TRUE + _FALSE:
            raise refuse(f"true or false ({'/'.join(_TRUE)} or {'/'.join(_FALSE)})")
        return value.lower() in _TRUE
    if kind in ("int", "Optional[int]"):
        if kind == "Optional[int]" and value.lower() in ("", "none"):
            return None
        try:
            return int(value)
        except ValueError:
            raise refuse("a whole number" + (" or none" if kind == "Optional[int]" else "")) from None
    if kind == "float":
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if number != number or number in (float("inf"), float("-inf")):
            raise refuse("a finite number")
        return number
    return value  # text: str and Optional[str] fields


def parse_overrides(pairs) -> dict:
    """`key=value` strings (from a command line or settings) into typed profile overrides: whole numbers, numbers,
    `r,g,b`, comma-separated texts, true/false, a JSON object for `task_words`, one of `FIELD_CHOICES` where a
    field has fixed values. ValueError in one line that names the field and what it takes (or the known fields,
    for an unknown one)."""
    types = {f.name: str(f.type) for f in dataclasses.fields(Profile)}
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} is not key=value")
        key, value = (part.strip() for part in pair.split("=", 1))
        if key not in types:
            raise ValueError(f"unknown profile field {key!r}; the fields are: {', '.join(types)}")
        out[key] = _override_value(key, types[key], value)
    return out
