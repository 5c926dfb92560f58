"""A warm first call in a fresh process: the kernels are in the cache ($GDNC_CACHE_DIR); this
measures the time from the script's start to the first result on the GPU, in steps, and which of
sympy, jinja2, optuna and tilelang the process imported. Public API only, so that two versions of
gdnc (two checkouts on PYTHONPATH) compare. Run it under `python -X importtime` for the import log.

    python benchmarks/warm_start.py 16/32 4096 [--out F]
"""
import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from script_io import write_out  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("heads", help="h_qk/h_v, e.g. 16/32")
    parser.add_argument("lengths", help="sequence lengths, e.g. 4096 or 28672+4096")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    steps = {}
    import torch

    steps["import torch"] = time.perf_counter() - START
    import gdnc

    steps["import gdnc"] = time.perf_counter() - START
    from gdnc.bench.shapes import Shape, make_inputs

    hq, hv = map(int, args.heads.split("/"))
    inputs = make_inputs(Shape(hq, hv, tuple(map(int, args.lengths.split("+")))), torch.Generator("cuda").manual_seed(0))
    torch.cuda.synchronize()
    steps["inputs on the GPU"] = time.perf_counter() - START
    gdnc.chunk_gated_delta_rule(**inputs)
    torch.cuda.synchronize()
    steps["first result"] = time.perf_counter() - START
    gdnc.chunk_gated_delta_rule(**inputs)
    torch.cuda.synchronize()
    steps["second result"] = time.perf_counter() - START
    imported = {m: m in sys.modules for m in ("sympy", "jinja2", "optuna", "tilelang")}
    first_call = steps["first result"] - steps["inputs on the GPU"]
    report = {"gdnc": gdnc.__file__, "heads": args.heads, "lengths": args.lengths, "steps_s": steps,
              "first_call_s": first_call, "imported": imported, "modules": len(sys.modules)}
    print(json.dumps(report))
    write_out(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
