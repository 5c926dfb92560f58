"""Run gdnc's forward op on one shape a few times, for a profiler to watch (Nsight Compute):

    ncu --clock-control none -k regex:gdn_forward --launch-skip 1 -c 1 \\
        --section WarpStateStats --section SourceCounters -o fwd \\
        python benchmarks/profile_forward.py 16/32 1x8192
    ncu -i fwd.ncu-rep --page source --csv --print-source sass > fwd_sass.csv

The first call compiles or loads the kernels and is skipped by --launch-skip; the shape is
"h_qk/h_v" and "N×T" as in anchors.md.
"""
import argparse
import sys

import torch

import gdnc
from gdnc.bench.shapes import Shape, make_inputs


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("heads", help="h_qk/h_v, e.g. 16/32")
    parser.add_argument("tokens", help="N×T or NxT, e.g. 1x8192")
    parser.add_argument("--calls", type=int, default=2)
    args = parser.parse_args(argv)
    hq, hv = (int(x) for x in args.heads.split("/"))
    n, t = (int(x) for x in args.tokens.replace("×", "x").split("x"))
    generator = torch.Generator("cuda").manual_seed(0)
    cu = torch.arange(n + 1, device="cuda", dtype=torch.int32) * t
    inputs = make_inputs(Shape(hq, hv, (t,) * n), generator, cu_seqlens=cu)
    for _ in range(args.calls):
        gdnc.chunk_gated_delta_rule(**inputs)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
