"""The demo model writers (`make demo`'s first run, `geovlm demo-model`) draw no progress bar on stderr, and leave
transformers' progress-bar setting as they found it."""
import pytest
from transformers.utils import logging as hf_logging

from geovlm.models.demo_model import no_progress_bars, write_demo_model
from geovlm.models.minigpt_demo import write_minigpt_demo


@pytest.mark.parametrize("write", [write_demo_model, write_minigpt_demo])
def test_the_demo_model_writer_prints_no_progress_bar(write, tmp_path, capfd):
    hf_logging.enable_progress_bar()
    try:
        out = write(tmp_path / "demo")
        err = capfd.readouterr().err
        assert (out / "geovlm.json").is_file()
        assert "Writing model shards" not in err and "it/s]" not in err, err
        assert hf_logging.is_progress_bar_enabled()  # scoped: the user's own setting is back
    finally:
        hf_logging.enable_progress_bar()


def test_save_pretrained_draws_its_bar_outside_the_scope(tmp_path, capfd):
    """What the scope silences: transformers' "Writing model shards" bar of a one-file model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    hf_logging.enable_progress_bar()
    model.save_pretrained(tmp_path / "loud")
    assert "Writing model shards" in capfd.readouterr().err
    with no_progress_bars():
        model.save_pretrained(tmp_path / "quiet")
    assert "Writing model shards" not in capfd.readouterr().err and hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    with no_progress_bars():
        pass
    assert not hf_logging.is_progress_bar_enabled()  # a disabled setting stays disabled
    hf_logging.enable_progress_bar()
