"""The matrix-vector kernels within the engine's reach on this CPU, against a plain read of the same bytes.

A decode step at batch 1 is a matrix-vector product per weight matrix: memory-bound, so its ceiling is how fast
the machine reads. This table shows how much of that read rate each kernel GeoVLM could call reaches over the
shapes of the benchmark model's decoder (`bench_engine.py`: a 768-wide 12-layer Llama, its q/k/v and gate/up
projections stacked as GeoVLM runs them, and the output head), fp32, one product per matrix, x `[1, in]`:

- the read rate: `torch.sum` over one buffer of the same size (what `make bench` takes as the bound);
- oneDNN: `torch.ops.mkldnn._linear_pointwise`, the kernel GeoVLM's decoder uses on CPU (`pick_linear`);
- MKL: `torch.mv`, what torch's `linear` calls for a single vector;
- OpenBLAS: `numpy.dot` into a preallocated output (numpy's own BLAS);
- MLAS: onnxruntime, every product in one graph run (no per-call overhead), thread spinning off;
- numba: the product of GeoVLM's compiled CPU step (`cpu_decode_step._products`), where numba is installed.

Runs alternate (A B ... B A) in this process with a pause before each, medians, the load printed. The best
kernel's share of the read rate bounds GeoVLM's % of the decode bound from above: a step also normalises,
rotates and attends (see `make bench`, "bare pass of GeoVLM's products").

    python bench/bench_kernels.py [--rounds 15] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import alternate, load_text, med  # noqa: E402


def decoder_shapes(width: int, layers: int, vocab: int) -> list:
    """(out, in) of each matrix a decode step multiplies, in order: per layer q/k/v stacked, o, gate/up stacked,
    down (intermediate = width·8/3, as `bench_engine.build_model`), then the output head."""
    inter = width * 8 // 3
    layer = [(3 * width, width), (width, width), (2 * inter, width), (width, inter)]
    return layer * layers + [(vocab, width)]


def kernel_runs(shapes) -> tuple:
    """({name: callable returning GB/s}, bytes per pass) over random fp32 matrices of `shapes`."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from geovlm.models.static_decoder import pick_linear

    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=gen) for s in shapes]
    vectors = [torch.randn(1, s[1], generator=gen) for s in shapes]
    total = sum(w.numel() * w.element_size() for w in weights)
    buffer = torch.ones(total // 4)
    linear, kernel = pick_linear(weights[0])

    arrays = [w.numpy() for w in weights]
    flat = [v.numpy()[0] for v in vectors]
    outs = [np.empty(s[0], np.float32) for s in shapes]

    nodes, inputs, outputs, inits = [], [], [], []
    for i, (w, v) in enumerate(zip(weights, vectors)):
        inits.append(numpy_helper.from_array(w.t().contiguous().numpy(), f"w{i}"))
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, list(v.shape)))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, w.shape[0]]))
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"y{i}"]))
    graph = helper.make_graph(nodes, "products", inputs, outputs, inits)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # its threads must not steal cores
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {f"x{i}": v.numpy() for i, v in enumerate(vectors)}

    def rate(fn):
        def run():
            time.sleep(0.05)  # every kernel starts from the same idle threads
            start = time.perf_counter()
            with torch.inference_mode():
                fn()
            return total / (time.perf_counter() - start) / 1e9
        return run

    def onednn():
        for w, v in zip(weights, vectors):
            linear(v, w)

    def mkl():
        for w, v in zip(weights, vectors):
            torch.mv(w, v[0])

    def openblas():
        for w, v, o in zip(arrays, flat, outs):
            np.dot(w, v, out=o)

    runs = {"read rate: torch.sum over a buffer of the same size": rate(buffer.sum),
            f"GeoVLM's kernel ({kernel}, pick_linear)": rate(onednn),
            "MKL (torch.mv)": rate(mkl),
            "OpenBLAS (numpy.dot)": rate(openblas),
            "MLAS (onnxruntime, all products in one graph)": rate(lambda: session.run(None, feeds))}
    from geovlm.models import cpu_decode_step

    if cpu_decode_step.numba is None:  # numba is not installed: no compiled step
        return runs, total
    rows = [v.numpy() for v in vectors]  # [1, in]: a batch of one row
    batch_outs = [np.empty((1, s[0]), np.float32) for s in shapes]

    def compiled():
        for w, v, o in zip(arrays, rows, batch_outs):
            cpu_decode_step._products(w, v, o)

    compiled()  # compiled (or loaded from numba's cache) before it is timed
    runs["numba (GeoVLM's compiled CPU step, cpu_decode_step._products)"] = rate(compiled)
    return runs, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 1 round: checks the script")
    args = parser.parse_args()
    import torch

    width, layers, vocab = (64, 2, 40) if args.smoke else (768, 12, 400)
    runs, total = kernel_runs(decoder_shapes(width, layers, vocab))
    rounds = 1 if args.smoke else args.rounds
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; {load_text()}")
    print(f"\n{'SMOKE RUN, tiny shapes: no figures. ' if args.smoke else ''}Matrix-vector products over the "
          f"decoder of a {width}x{layers} Llama ({total / 1e6:.1f} MB of fp32 weights), medians of {rounds} "
          f"alternated rounds.\n")
    rates = {name: med(values) for name, values in alternate(runs, rounds).items()}
    read = rates[next(iter(rates))]
    print("| kernel | GB/s | % of the read rate |\n|---|---|---|")
    for name, value in rates.items():
        print(f"| {name} | {value:.1f} | {100 * value / read:.0f} % |")
    print(f"| (machine: {load_text()}) | | |")


if __name__ == "__main__":
    main()
