"""Time gdnc's public op on a few shapes, through its public API only, so that two versions of gdnc
(two checkouts on PYTHONPATH) can be compared on one GPU in one call: CUDA-graph medians (the
device time the benchmark reports) and eager calls (what a caller without graphs pays, host
included).

    python benchmarks/time_op.py [--shape 2/8:2048 ...] [--eager-calls 200] [--out F]
"""
import argparse
import statistics
import sys
import time

from script_io import parse_shape, write_out

SHAPES = ["2/8:2048", "2/8:32768", "16/32:4096", "16/32:8192+8192+8192+8192", "16/48:4096+28672",
          "16/64:1024+1024+1024+1024+1024+1024+1024+1024"]


def eager_us(call, calls: int) -> float:
    """Median over 5 rounds of the time per call of ``calls`` back-to-back eager calls, synchronised
    at the end of each round (a caller's host work and launches included)."""
    import torch

    rounds = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(rounds)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", nargs="+", default=SHAPES, help="h_qk/h_v:len[+len...]")
    parser.add_argument("--eager-calls", type=int, default=200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    import gdnc
    from gdnc.bench.shapes import Shape, make_inputs
    from gdnc.bench.timing import time_calls

    rows = []
    for text in args.shape:
        inputs = make_inputs(Shape(*parse_shape(text)), torch.Generator("cuda").manual_seed(0))
        call = lambda: gdnc.chunk_gated_delta_rule(**inputs)  # noqa: E731
        call()  # loads (or builds) the kernels
        graph = time_calls([call])
        eager = eager_us(call, args.eager_calls)
        rows.append({"shape": text, "graph_ms": graph.ms, "graph": graph.as_dict(), "eager_us": eager})
        print(f"{text:28s} graph {graph.ms:.4f} ms ({graph.method}, spread {graph.spread:.1%}), eager {eager:.1f} µs a call",
              flush=True)
    write_out(args.out, {"device": torch.cuda.get_device_name(), "gdnc": gdnc.__file__, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
