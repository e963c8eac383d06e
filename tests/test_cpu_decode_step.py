"""The compiled CPU decode step (models/cpu_decode_step.py) against the torch step it replaces at batch 1."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")


def _run_python(code: str, timeout: float) -> str:
    """The standard output of `code` run by this interpreter in a fresh process; fails the test with its standard
    error where it exits with another status than 0."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)  # nosec
    assert done.returncode == 0, done.stderr
    return done.stdout


def _llama(**overrides):
    """A random 3-layer Llama from its config: grouped-query attention (4 query heads over 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(vocab_size=120, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
    settings.update(overrides)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


def _torch_step(**overrides):
    """A decoder of the same model (the same seed) whose steps run as torch operations."""
    from geovlm.models.static_decoder import StaticDecoder

    plain = StaticDecoder(_llama(**overrides))
    plain._stacking.join()
    plain._compiled = None
    assert plain.step_kernel != "numba"
    return plain


def _decode(decoder, prompts, tokens, retire_after=None, retire_row=-1, capacity=32):
    """Logits of a (ragged) batch's prefill and of each step (`tokens`: one list per step, a token per row of the
    batch), and the cache; after `retire_after` steps row `retire_row` is retired from the cache (as the decoding
    loop does with a finished row: the rows after it move down)."""
    cache = decoder.new_cache(len(prompts), capacity)
    rows = list(range(len(prompts)))
    out = []
    with torch.inference_mode():
        out.append(decoder.prefill(prompts, cache))
        for n, step_tokens in enumerate(tokens):
            if n == retire_after:
                del rows[retire_row]
                cache = decoder.keep_rows(cache, rows)
            out.append(decoder.step(torch.tensor([step_tokens[r] for r in rows]), cache))
    return out, cache


def test_the_compiled_step_serves_batch_1_and_equals_the_torch_step():
    from geovlm.models.static_decoder import StaticDecoder

    compiled = StaticDecoder(_llama())
    assert compiled.step_kernel == "numba", compiled.compiled_step_reason
    plain = _torch_step()

    torch.manual_seed(1)
    prompt = torch.randn(9, 64)
    tokens = [5, 17, 99, 3, 64, 64, 0]
    ours, our_cache = _decode(compiled, [prompt], [[t] for t in tokens])
    theirs, their_cache = _decode(plain, [prompt], [[t] for t in tokens])
    ours, theirs = torch.cat(ours), torch.cat(theirs)
    assert our_cache.lengths == their_cache.lengths == [9 + len(tokens)]
    assert int(our_cache.positions[0]) == 9 + len(tokens)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_cache.keys, their_cache.keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_cache.values, their_cache.values, rtol=1e-5, atol=1e-5)
    assert ours.argmax(-1).unique().numel() > 1  # the steps' logits differ from each other: not vacuous


def test_the_torch_step_serves_where_the_compiled_one_cannot(monkeypatch):
    from geovlm.models import cpu_decode_step
    from geovlm.models.static_decoder import StaticDecoder

    biased = StaticDecoder(_llama(attention_bias=True))
    assert biased.step_kernel != "numba"
    assert "biases" in biased.compiled_step_reason

    half = StaticDecoder(_llama().to(torch.bfloat16))
    assert half.step_kernel != "numba"
    assert half.compiled_step_reason == "the model is bfloat16 on cpu, not fp32 on CPU"

    monkeypatch.setattr(cpu_decode_step, "numba", None)
    without = StaticDecoder(_llama())
    assert without.step_kernel != "numba" and without.compiled_step_reason == "numba is not installed"
    logits, cache = _decode(without, [torch.randn(4, 64)], [[1], [2]])
    assert torch.cat(logits).shape == (3, 120) and cache.lengths == [6]


@pytest.mark.parametrize("retire_row", [0, 2])
def test_a_ragged_batch_takes_the_compiled_step_before_and_after_a_row_is_retired(monkeypatch, retire_row):
    """Retiring the first row moves the others down within the cache; retiring the last moves nothing. Either
    way the cache is a view of the first rows, which the step writes into in place (`CpuDecodeStep.whole`)."""
    from geovlm.models import cpu_decode_step
    from geovlm.models.static_decoder import StaticDecoder

    compiled = StaticDecoder(_llama())
    assert compiled.step_kernel == "numba"
    plain = _torch_step()
    calls = []
    kernel = cpu_decode_step._decode

    def counted(hidden, *args):
        calls.append(hidden.shape[0])
        return kernel(hidden, *args)

    monkeypatch.setattr(cpu_decode_step, "_decode", counted)
    torch.manual_seed(2)
    prompts = [torch.randn(n, 64) for n in (5, 11, 2)]  # three lengths: each row attends over its own span
    tokens = [[7, 8, 9], [1, 2, 3], [4, 5, 6], [10, 11, 12], [13, 14, 15]]
    ours, our_cache = _decode(compiled, prompts, tokens, retire_after=3, retire_row=retire_row)
    theirs, their_cache = _decode(plain, prompts, tokens, retire_after=3, retire_row=retire_row)
    assert calls == [3, 3, 3, 2, 2]  # every step compiled, before and after the retire
    kept = [n for i, n in enumerate((5, 11, 2)) if i != retire_row]
    assert our_cache.lengths == their_cache.lengths == [n + 5 for n in kept]
    assert not our_cache.keys.is_contiguous()  # a view of the first rows
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_cache.keys, their_cache.keys, rtol=1e-5, atol=1e-5)
    assert not ours[1][0].equal(ours[1][1])  # the rows differ: not vacuous


@pytest.mark.parametrize("rope", [None, {"rope_type": "dynamic", "factor": 2.0}])
def test_rotary_embedding_past_the_first_table_and_with_a_scaling_that_changes_with_length(rope):
    """The step's rotary table (256 positions at first) grows past a 300-token prompt; transformers' dynamic
    scaling changes the frequencies past max_position_embeddings (64 here), so it is computed at each step."""
    from geovlm.models.static_decoder import StaticDecoder

    settings = dict(rope_scaling=rope) if rope else {}
    compiled = StaticDecoder(_llama(**settings))
    assert compiled.step_kernel == "numba", compiled.compiled_step_reason
    assert compiled._compiled._rope_changes == (rope is not None)
    torch.manual_seed(2)
    prompt = torch.randn(300, 64)
    tokens = [[t] for t in (7, 8, 9, 10)]
    ours, _ = _decode(compiled, [prompt], tokens, capacity=310)
    theirs, _ = _decode(_torch_step(**settings), [prompt], tokens, capacity=310)
    torch.testing.assert_close(torch.cat(ours), torch.cat(theirs), rtol=1e-5, atol=1e-5)
    if rope is None:
        assert len(compiled._compiled._cos) == 512


def test_numba_present_but_not_serving_is_a_warning(monkeypatch, caplog):
    """numba's JIT switched off, or numba failing to load, leaves the torch step serving with a warning (the
    command line shows warnings); a model the step does not take is only logged at INFO."""
    import logging

    from geovlm.models import cpu_decode_step
    from geovlm.models.static_decoder import StaticDecoder

    monkeypatch.setattr(cpu_decode_step.numba.config, "DISABLE_JIT", True)
    with caplog.at_level(logging.INFO, logger="geovlm"):
        off = StaticDecoder(_llama())
        assert off.step_kernel != "numba" and "NUMBA_DISABLE_JIT" in off.compiled_step_reason
    assert [r.levelno for r in caplog.records if "unavailable" in r.getMessage()] == [logging.WARNING]
    monkeypatch.undo()

    caplog.clear()
    monkeypatch.setattr(cpu_decode_step, "numba", None)
    monkeypatch.setattr(cpu_decode_step, "LOAD_ERROR", "numba failed to load: Number of threads must be > 0")
    with caplog.at_level(logging.INFO, logger="geovlm"):
        broken = StaticDecoder(_llama())
        assert broken.step_kernel != "numba" and broken.compiled_step_reason.startswith("numba failed to load")
    assert [r.levelno for r in caplog.records if "unavailable" in r.getMessage()] == [logging.WARNING]
    monkeypatch.undo()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="geovlm"):
        half = StaticDecoder(_llama().to(torch.bfloat16))
        assert half.step_kernel != "numba"
    assert [r.levelno for r in caplog.records if "unavailable" in r.getMessage()] == [logging.INFO]


def test_the_first_compile_is_announced_once(tmp_path, monkeypatch, caplog):
    """Without a marker in numba's cache folder, loading says it compiles (seconds, once); the warm-up leaves the
    marker and the next load is silent."""
    import logging

    from geovlm.models import cpu_decode_step
    from geovlm.models.static_decoder import StaticDecoder

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))  # the marker's folder (numba keeps its own setting)
    with caplog.at_level(logging.WARNING, logger="geovlm"):
        first = StaticDecoder(_llama())
        assert first.step_kernel == "numba"
        second = StaticDecoder(_llama())
        assert second.step_kernel == "numba"
    announced = [r.getMessage() for r in caplog.records if "compiling the CPU decode step" in r.getMessage()]
    assert len(announced) == 1 and announced[0].endswith(f"kept in {tmp_path}")
    [marker] = tmp_path.glob("*/geovlm-decode-step-*.done")  # beside the kernels, naming their source
    assert marker.read_text() == cpu_decode_step.__file__


def test_the_step_runs_on_tbb_where_the_tbb_wheel_is_installed():
    """numba takes TBB first when it can load it (load_tbb makes the wheel's library loadable); without the wheel
    (or with NUMBA_THREADING_LAYER set) it is OpenMP or numba's own workqueue."""
    import importlib.metadata
    import os

    from geovlm.models import cpu_decode_step
    from geovlm.models.static_decoder import StaticDecoder

    assert StaticDecoder(_llama()).step_kernel == "numba"  # the warm-up ran a parallel kernel
    try:
        importlib.metadata.distribution("tbb")
        wheel = True
    except importlib.metadata.PackageNotFoundError:
        wheel = False
    if wheel and "NUMBA_THREADING_LAYER" not in os.environ:
        assert cpu_decode_step.TBB_PATH is not None
        assert cpu_decode_step.threading_layer() == "tbb"
    else:
        assert cpu_decode_step.threading_layer() in {"tbb", "omp", "workqueue"}


def test_load_tbb_without_the_wheel_or_with_a_broken_library(monkeypatch, caplog):
    import ctypes
    import importlib.metadata
    import logging
    from pathlib import Path

    from geovlm.models import cpu_decode_step

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    with monkeypatch.context() as patch:
        patch.setattr(importlib.metadata, "distribution", missing)
        assert cpu_decode_step.load_tbb() is None

    class Wheel:
        files = [importlib.metadata.PackagePath(f"../../{cpu_decode_step.TBB_LIBRARIES['linux']}")]

        def locate_file(self, path):
            return Path("/nowhere") / path

    Wheel.files[0].dist = Wheel()

    def refuse(path):
        raise OSError(f"{path}: wrong ELF class")

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Wheel())
    monkeypatch.setattr(ctypes, "CDLL", refuse)
    monkeypatch.setattr("sys.platform", "linux")
    with caplog.at_level(logging.INFO, logger="geovlm"):
        assert cpu_decode_step.load_tbb() is None
    assert any("did not load" in r.getMessage() and "OpenMP" in r.getMessage() for r in caplog.records)


def test_whole_takes_a_cache_and_its_first_rows_only():
    from geovlm.models.cpu_decode_step import CpuDecodeStep

    cache = torch.arange(2 * 4 * 3 * 5 * 2, dtype=torch.float32).view(2, 4, 3, 5, 2)
    assert CpuDecodeStep.whole(cache).shape == (2, 4, 3, 5, 2)
    first = CpuDecodeStep.whole(cache[:, :2])
    assert first.shape == (2, 4, 3, 5, 2) and first.flags.c_contiguous
    first[1, 3, 2, 4, 1] = -1.0  # the same memory as the cache's
    assert cache[1, 3, 2, 4, 1] == -1.0
    assert CpuDecodeStep.whole(cache[:, 1:]) is None  # not the first rows
    assert CpuDecodeStep.whole(cache[:, :, :, :3]) is None  # a cut along the positions
    assert CpuDecodeStep.whole(cache.transpose(3, 4).contiguous().transpose(3, 4)) is None


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_a_process_on_one_cpu_whose_kernels_ran_on_another_thread_exits():
    """With one CPU (here an affinity of one; a cgroup quota of one does the same), TBB has no worker thread, and
    numba's TBB layer waited at exit for a task left on the thread that first ran a parallel kernel: a process
    whose first kernel ran off the main thread (the step's warm-up, a server's batches) never exited (numba issue
    #10556). Importing the module on the main thread starts the layer there."""
    child = (
        "import os, threading\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "import numpy as np\n"
        "from geovlm.models import cpu_decode_step as c\n"
        "w, x, out = np.ones((8, 8), np.float32), np.ones((1, 8), np.float32), np.zeros((1, 8), np.float32)\n"
        "t = threading.Thread(target=c._products, args=(w, x, out)); t.start(); t.join()\n"
        "print(c.threading_layer(), float(out.sum()))\n"
    )
    layer, total = _run_python(child, timeout=90).split()
    assert layer in {"tbb", "omp", "workqueue"} and float(total) == 64.0


def test_a_compile_failure_is_said_in_one_line(monkeypatch, caplog):
    """numba's threading-layer errors span lines (a HINT with a shell command); the warning keeps one line."""
    import logging

    from geovlm.models import cpu_decode_step
    from geovlm.models.static_decoder import StaticDecoder

    def refuse(self):
        raise ValueError("No threading layer could be loaded.\nHINT:\nIntel TBB is required, try:\n$ pip install tbb")

    monkeypatch.setattr(cpu_decode_step.CpuDecodeStep, "warm_up", refuse)
    with caplog.at_level(logging.WARNING, logger="geovlm"):
        decoder = StaticDecoder(_llama())
        assert decoder.step_kernel != "numba"
    assert decoder.compiled_step_reason == ("compiling it failed: No threading layer could be loaded. HINT: Intel TBB "
                                            "is required, try: $ pip install tbb")
    assert [r.getMessage().count("\n") for r in caplog.records if "unavailable" in r.getMessage()] == [0]


def test_the_preload_loads_the_kernel_a_models_step_runs():
    """`preload` (run while a model's weights load) calls the step with a tiny model of zeros: numba keys its
    kernels by the arguments' types, so a model's step must find the preloaded kernel, not compile another one. In
    a fresh process (no other test's step ran there)."""
    from pathlib import Path

    child = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from geovlm.models import cpu_decode_step as c\n"
        "from test_cpu_decode_step import _llama, _decode\n"
        "from geovlm.models.static_decoder import StaticDecoder\n"
        "c.preload()\n"
        "preloaded = list(c._decode.signatures)\n"
        "decoder = StaticDecoder(_llama())\n"
        "assert decoder.step_kernel == 'numba', decoder.compiled_step_reason\n"
        "_decode(decoder, [torch.randn(5, 64)], [[3], [4]])\n"
        "print(len(preloaded), len(c._decode.signatures), c._decode.signatures == preloaded)\n"
    )
    assert _run_python(child, timeout=180).split() == ["1", "1", "True"]
