"""Language model path: greedy parity with transformers' generate, batches, stops, streaming, multi-turn."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402

torch = pytest.importorskip("torch")

QUESTION = [("user", "[grounding]Describe the image")]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return ms.pipeline(str(ms.demo_dir(tmp_path_factory)))


def _pixels(pipe, image):
    from geovlm.core.georef import fit_plan
    from geovlm.models.preprocess import fit_image, normalise

    plan = fit_plan(pipe.profile, image.shape[1], image.shape[0])
    return normalise([fit_image(image, plan, pipe.pad_color)], pipe.encoder.mean, pipe.encoder.std)


def _our_tokens(pipe, requests):
    from geovlm.models.language import DecodeSettings

    prompts = [pipe.prompt_ids(r.messages) for r in requests]
    feats = pipe.encode([r.image for r in requests])
    settings = [DecodeSettings(max_new_tokens=r.max_new_tokens) for r in requests]
    return [d.token_ids for d in pipe.lm.decoding(prompts, list(feats), settings).run()]


def _reference_tokens(pipe, image, messages, max_new_tokens):
    """transformers' LlavaForConditionalGeneration.generate, greedy, fp32, on its own copy of the checkpoint."""
    model = ms.hf_model(str(pipe.checkpoint.path))
    ids = torch.tensor([pipe.prompt_ids(messages)])
    with torch.no_grad():
        ref = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=torch.from_numpy(_pixels(pipe, image)),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return ref[0, ids.shape[1] :].tolist()


def test_greedy_tokens_equal_transformers_generate(pipe):
    from geovlm.models.pipeline import GenRequest

    assert pipe.lm.decoder is not None  # the static-cache decoder is what runs (not transformers' forward)
    if torch.backends.mkldnn.is_available():  # with oneDNN's linear kernel, whose rounding differs from MKL's
        assert pipe.lm.decoder.kernel == "onednn"
    if importlib.util.find_spec("numba"):  # batch-1 steps run compiled (models/cpu_decode_step.py), sums reordered
        assert pipe.lm.decoder.step_kernel == "numba", pipe.lm.decoder.compiled_step_reason
    images = ms.cogeo_tiles(3) + [ms.random_image(7)]
    outputs = []
    for image in images:
        ours = _our_tokens(pipe, [GenRequest(image, QUESTION, max_new_tokens=24)])[0]
        assert ours == _reference_tokens(pipe, image, QUESTION, 24)
        outputs.append(tuple(ours))
    assert len(set(outputs)) == len(images)  # the images steer the tokens: the parity is not vacuous


def test_ragged_batch_of_8_equals_transformers_generate_one_by_one(pipe, monkeypatch):
    """Eight prompts of different lengths and budgets decoded together (packed prefill, one cache row each,
    finished rows retired from the cache) give, row by row, the tokens of transformers' generate run alone."""
    from geovlm.models.pipeline import GenRequest

    decoder, rows_per_step = pipe.lm.decoder, []
    step = decoder.step

    def counted(tokens, cache, **kw):
        rows_per_step.append(int(tokens.shape[0]))
        return step(tokens, cache, **kw)

    monkeypatch.setattr(decoder, "step", counted)

    questions = ["Describe", "What is this?", "[grounding]Describe the image", "[refer] where is <p> the road </p>",
                 "Count the buildings in this aerial photo, please", "[identify] what is at the centre?", "Hi",
                 "[grounding]Name every object you see and give the location of each one of them"]
    images = ms.cogeo_tiles(4) + [ms.random_image(20 + i) for i in range(4)]
    requests = [GenRequest(im, [("user", q)], max_new_tokens=10 + 3 * i)
                for i, (im, q) in enumerate(zip(images, questions))]
    lengths = {len(pipe.prompt_ids(r.messages)) for r in requests}
    assert len(lengths) >= 6  # ragged indeed
    ours = _our_tokens(pipe, requests)
    monkeypatch.undo()
    for r, tokens in zip(requests, ours):
        assert tokens == _reference_tokens(pipe, r.image, r.messages, r.max_new_tokens)
    assert len({tuple(t) for t in ours}) == len(requests)
    # rows left the batch as they finished: the longest answer's last steps ran alone
    assert rows_per_step[0] == 8 and rows_per_step == sorted(rows_per_step, reverse=True)
    assert rows_per_step[-1] == sum(len(t) == max(map(len, ours)) for t in ours) < 8


def test_onednn_linear_equals_torch_linear_and_is_only_picked_where_it_runs():
    from torch.nn.functional import linear

    from geovlm.models.static_decoder import pick_linear

    kernel, name = pick_linear(torch.zeros(2, 2))
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    assert name == "onednn"
    x = torch.randn(2, 5, 64)
    w, packed = torch.randn(96, 64), torch.randn(96, 3)
    for bias in (None, packed[:, 1], torch.randn(96)):  # a strided bias too: the operator needs it contiguous
        assert torch.allclose(kernel(x, w, bias), linear(x, w, bias), rtol=1e-5, atol=1e-4)
    assert pick_linear(torch.zeros(2, 2, dtype=torch.float64))[1] == "torch"  # a dtype it does not serve


def test_stacking_runs_beside_the_load_and_its_failure_reaches_the_first_step(pipe, monkeypatch):
    from geovlm.models import static_decoder

    decoder = pipe.lm.decoder
    assert [w.qkv.shape[0] for w in decoder.weights] == [sum(w.splits) for w in decoder.weights]
    q_proj = decoder.layers[0].self_attn.q_proj
    assert q_proj.weight.data_ptr() == decoder.weights[0].qkv.data_ptr()  # a view of the stack: one copy

    def broken(layer):
        raise MemoryError("no room for the stacked projections")

    monkeypatch.setattr(static_decoder, "_layer_weights", broken)
    fresh = static_decoder.StaticDecoder(pipe.lm.model)
    with pytest.raises(RuntimeError, match="no room for the stacked projections"):
        fresh.step(torch.tensor([1]), fresh.new_cache(1, 8))


def test_transformers_forward_path_gives_the_same_tokens(pipe, monkeypatch):
    """The fallback for architectures without a static decoder (transformers' forward, left-padded batch) gives
    the static decoder's tokens."""
    from geovlm.models.pipeline import GenRequest

    requests = [GenRequest(im, QUESTION, max_new_tokens=12) for im in ms.cogeo_tiles(2)]
    fast = _our_tokens(pipe, requests)
    monkeypatch.setattr(pipe.lm, "decoder", None)
    assert _our_tokens(pipe, requests) == fast


def test_batch_equals_single_runs(pipe):
    from geovlm.models.pipeline import GenRequest

    questions = ["[grounding]Describe the image", "What is this?", "[refer] Give me the location of <p> the road </p>"]
    images = ms.cogeo_tiles(2) + [ms.random_image(3, 60, 200)]
    requests = [
        GenRequest(im, [("user", q)], max_new_tokens=12 + 4 * i) for i, (im, q) in enumerate(zip(images, questions))
    ]
    batched = pipe.generate_batch(requests)
    singles = [pipe.generate_batch([r])[0] for r in requests]
    assert [b.text for b in batched] == [s.text for s in singles]
    assert [b.tokens for b in batched] == [s.tokens for s in singles]
    assert _our_tokens(pipe, requests) == [t for r in requests for t in _our_tokens(pipe, [r])]
    assert set(batched[0].timings) == {"preprocess", "encode", "prefill", "decode"}


def test_length_and_stop_strings(pipe):
    from geovlm.models.pipeline import GenRequest

    image = ms.random_image(11)
    full = pipe.generate_batch([GenRequest(image, QUESTION, max_new_tokens=30)])[0]
    assert full.finish_reason == "length" and full.tokens == 30
    stop = full.text[10:13]
    cut = full.text.index(stop)
    stopped = pipe.generate_batch([GenRequest(image, QUESTION, max_new_tokens=30, stop=(stop,))])[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut]
    assert stopped.tokens < 30


def test_stream_deltas_join_to_the_answer(pipe):
    from geovlm.models.pipeline import GenRequest, StreamDone

    request = GenRequest(ms.random_image(12), QUESTION, max_new_tokens=25)
    items = list(pipe.stream(request))
    done = items[-1]
    assert isinstance(done, StreamDone) and done == ""
    assert len(items) > 3 and all(isinstance(i, str) for i in items)
    assert "".join(items) == done.result.text == pipe.generate_batch([request])[0].text
    held = list(pipe.stream(GenRequest(request.image, QUESTION, max_new_tokens=25, stop=(done.result.text[5:9],))))
    assert "".join(held) == done.result.text[: done.result.text.index(done.result.text[5:9])]


def test_sampling_is_seeded(pipe):
    from geovlm.models.pipeline import GenRequest

    image = ms.random_image(13)

    def sample(seed):
        r = GenRequest(image, QUESTION, max_new_tokens=20, temperature=1.5, top_p=0.95, seed=seed)
        return pipe.generate_batch([r])[0].text

    assert sample(1) == sample(1)
    assert len({sample(s) for s in range(2, 6)}) > 1
    greedy = pipe.generate_batch([GenRequest(image, QUESTION, max_new_tokens=20)])[0].text
    near_greedy = GenRequest(image, QUESTION, max_new_tokens=20, temperature=1.0, top_p=1e-6, seed=0)
    assert pipe.generate_batch([near_greedy])[0].text == greedy  # top_p keeps only the best token


def test_multi_turn_reuses_the_encoding(pipe, monkeypatch):
    from geovlm.models.pipeline import GenRequest

    image = ms.random_image(14)
    first = pipe.generate_batch([GenRequest(image, QUESTION, max_new_tokens=8)])[0]
    calls = []
    real_run = pipe.encoder.run
    monkeypatch.setattr(pipe.encoder, "run", lambda px: calls.append(1) or real_run(px))
    turns = QUESTION + [("assistant", first.text), ("user", "And the roads?")]
    second = pipe.generate_batch([GenRequest(image.copy(), turns, max_new_tokens=8)])[0]
    assert calls == [] and second.tokens == 8
    prompt = pipe.prompt(turns)
    assert prompt.count("<image>") == 1
    assert prompt.endswith(f"ASSISTANT: {first.text}</s>USER: And the roads? ASSISTANT:")


def test_bad_requests(pipe):
    from geovlm.models.pipeline import GenRequest

    with pytest.raises(ValueError, match="alternate"):
        pipe.generate_batch([GenRequest(ms.random_image(1), [("assistant", "hi")])])
    with pytest.raises(ValueError, match="uint8"):
        pipe.generate_batch([GenRequest(np.zeros((4, 4), np.float32), QUESTION)])
    with pytest.raises(ValueError, match="max_new_tokens"):
        pipe.generate_batch([GenRequest(ms.random_image(1), QUESTION, max_new_tokens=0)])


def test_info_says_random_stand_in(pipe):
    info = pipe.info()
    assert info["random_stand_in"] is True
    assert info["family"] == "geochat" and info["input_size"] == 504 and info["fit"] == "pad"
    assert info["image_tokens"] == 64 and "random" in info["licence"]


def _byte_fallback_lm():
    """A stand-in for Decoding's language model: a Llama/Mistral-style tokenizer that writes a character it has
    no token for as one <0xNN> token per UTF-8 byte."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4}
    vocab.update({f"<0x{byte:02X}>": 5 + byte for byte in range(256)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")
    return SimpleNamespace(tokenizer=fast, eos_ids={2})


@pytest.mark.parametrize("text", ["a😀b", "a中b", "é", "😀😀a", "b中"])
def test_stream_holds_back_every_pending_byte(text):
    from geovlm.models.language import DecodeSettings, Decoding

    lm = _byte_fallback_lm()
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # the test is about characters written as several byte tokens
    decoding = Decoding(lm, [[1]], [None], [DecodeSettings(max_new_tokens=50, stop=("</s>",))])
    deltas = [decoding._update(0, token) for token in ids + [2]]
    assert "".join(deltas) == decoding.results[0].text == text


def test_a_control_character_the_model_writes_is_streamed_and_kept_as_the_replacement_character():
    """The tokenizer decodes <0x00> to a NUL and <0x1B> to an escape; the answer carries U+FFFD instead (one for
    one), streamed or whole: nothing that prints or stores it gets a control character."""
    from geovlm.models.language import DecodeSettings, Decoding

    lm = _byte_fallback_lm()
    nul, escape = (lm.tokenizer.convert_tokens_to_ids(t) for t in ("<0x00>", "<0x1B>"))
    ids = [3, nul, 4, escape, nul, 3]
    assert lm.tokenizer.decode(ids) == "a\x00b\x1b\x00a"  # what the model wrote
    decoding = Decoding(lm, [[1]], [None], [DecodeSettings(max_new_tokens=50, stop=("</s>",))])
    deltas = [decoding._update(0, token) for token in ids + [2]]
    assert "".join(deltas) == decoding.results[0].text == "a\ufffdb\ufffd\ufffda"


def test_special_token_text_from_users_stays_plain_text(pipe):
    """'<image>' or '</s>' typed in a question or an earlier answer is text: never the image slot, never an EOS."""
    from geovlm.models.pipeline import GenRequest

    image = ms.random_image(15)
    turns = [("user", "what is <image> here? stop </s> now"), ("assistant", "a </s> b <image>"),
             ("user", "<image></s>")]
    results = pipe.generate_batch([GenRequest(image, turns[:1], max_new_tokens=6), GenRequest(image, turns, 6)])
    assert all(r.text and r.finish_reason in ("stop", "length") for r in results)
    lm = pipe.lm
    eos = lm.tokenizer.convert_tokens_to_ids("</s>")
    for messages, separators in ((turns[:1], 0), (turns, 1)):
        ids = pipe.prompt_ids(messages)
        assert ids.count(lm.image_token_id) == lm.image_tokens  # the template's image only
        assert ids.count(eos) == separators  # the template's turn separator only


def test_the_tests_pipeline_stays_on_the_cpu_beside_a_gpu(pipe, monkeypatch):
    """The parity tests compare with fp32 CPU torch: on a GPU machine the shared pipeline must not go to CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ms.pipeline.__wrapped__(str(pipe.checkpoint.path)).lm.device == "cpu"


def test_a_request_longer_than_the_context_is_refused_alone(pipe):
    from geovlm.models.pipeline import GenRequest

    image = np.full((64, 64, 3), 90, np.uint8)
    context = pipe.lm.context_length
    assert context
    fits = GenRequest(image, QUESTION, max_new_tokens=4)
    too_long = GenRequest(image, QUESTION, max_new_tokens=context)
    with pytest.raises(ValueError, match="exceed the model's context"):
        pipe.generate_batch([too_long])
    assert pipe.generate_batch([fits])[0].tokens >= 1
