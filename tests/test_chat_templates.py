"""The chat templates shipped for vLLM (engine/chat_templates/) give the prompt our engine builds: rendered by
transformers' `apply_chat_template` and tokenized whole (as vLLM does: the template carries the BOS, no
special tokens added), they equal the profile's prompt text and `LanguageModel.prompt_ids` of the engine,
token for token (the demo model's tokenizer; the image as one `<image>` token, which both expand alike)."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402,F401  (offline hub)

from geovlm.core.profiles import get_profile  # noqa: E402
from geovlm.models.language import LanguageModel  # noqa: E402
from geovlm.models.pipeline import VlmPipeline  # noqa: E402

TEMPLATES = Path(__file__).resolve().parents[1] / "engine" / "chat_templates"
FAMILIES = ("geochat", "skysensegpt", "rsllava", "llava15")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from geovlm.models.demo_model import write_demo_model

    path = tmp_path_factory.mktemp("tok") / "demo"
    write_demo_model(path, seed=0)
    return AutoTokenizer.from_pretrained(path)


def engine_ids(tokenizer, profile, turns):
    """The engine's own prompt ids (models/pipeline.py + models/language.py) with a 1-token image."""
    parts = VlmPipeline.prompt_parts(SimpleNamespace(profile=profile), turns)
    special_ids = {token: int(i) for token, i in tokenizer.get_added_vocab().items()}
    image_id = special_ids["<image>"]
    import re

    names = sorted(special_ids, key=len, reverse=True)
    lm = SimpleNamespace(tokenizer=tokenizer, special_ids=special_ids, image_token_id=image_id, image_tokens=1,
                         _specials=re.compile("(" + "|".join(re.escape(n) for n in names) + ")"))
    return "".join(text for text, _ in parts), LanguageModel.prompt_ids(lm, parts)


def openai_messages(turns):
    out = []
    for i, (role, text) in enumerate(turns):
        if i == 0:
            out.append({"role": role, "content": [{"type": "image"}, {"type": "text", "text": text}]})
        else:
            out.append({"role": role, "content": [{"type": "text", "text": text}]})
    return out


CONVERSATIONS = [
    [("user", "[grounding]Describe the image in detail.")],
    [("user", "What is in the harbour?"), ("assistant", "Two ships {<10><20><30><40>|<90>}"),
     ("user", "[refer] Give me the location of <p> the larger ship </p>")],
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("turns", CONVERSATIONS, ids=["one turn", "three turns"])
def test_template_gives_the_profiles_prompt_token_for_token(tokenizer, family, turns):
    template = (TEMPLATES / f"{family}.jinja").read_text()
    profile = get_profile(family)
    text, ids = engine_ids(tokenizer, profile, turns)
    rendered = tokenizer.apply_chat_template(openai_messages(turns), chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
    # the text, with a space after each special token (the word mark a piece-wise tokenization gives)
    assert rendered == (tokenizer.bos_token + " " + text).replace("<image>", "<image> ").replace("</s>", "</s> ")
    assert tokenizer(rendered, add_special_tokens=False)["input_ids"] == ids
    # content given as plain strings (the image placeholder already in the first user turn): the same prompt
    plain = [{"role": r, "content": ("<image> \n" + t) if i == 0 else t} for i, (r, t) in enumerate(turns)]
    assert tokenizer.apply_chat_template(plain, chat_template=template, tokenize=False) == rendered
