"""Device time of every kernel in one gdnc op call, by torch.profiler (CUDA activity), per plan.

    python benchmarks/profile_op.py [--shape 2/8:32768] [--segment-len N] [--out F]
"""
import argparse
import json
import math
import sys


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="2/8:32768", help="h_qk/h_v:len[+len...]")
    parser.add_argument("--segment-len", type=int, default=None, help="force a split (0: unsplit); default: the plan")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    import gdnc
    from gdnc.bench.shapes import Shape, make_inputs
    from gdnc.emit.config import Heads
    from gdnc.ops import plan_for, run_kernels
    from gdnc.plan import ForwardPlan
    from gdnc.reference.problem import check_arguments

    heads, lengths = args.shape.split(":")
    hq, hv = map(int, heads.split("/"))
    lengths = tuple(map(int, lengths.split("+")))
    inputs = make_inputs(Shape(hq, hv, lengths), torch.Generator("cuda").manual_seed(0))
    q, k, v, g, beta, h0, cu = (inputs[n] for n in ("q", "k", "v", "g", "beta", "initial_state", "cu_seqlens"))
    s = check_arguments(gdnc.get_variant("gdn"), q, k, v, scale=None, initial_state=h0, cu_seqlens=cu,
                        inputs={"g": g, "beta": beta})
    tokens = sum(lengths)
    if args.segment_len is None:
        plan = plan_for(Heads(hq, hv), tokens, len(lengths), q.device)
    elif args.segment_len == 0:
        plan = ForwardPlan(64)
    else:
        plan = ForwardPlan(64, args.segment_len, math.ceil(tokens / args.segment_len))
    call = lambda: run_kernels(q, k, v, g, beta, s, h0, True, cu, plan=plan)  # noqa: E731
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    rows = [{"kernel": e.key, "calls": e.count, "device_us": e.device_time_total}
            for e in prof.key_averages() if e.device_time_total > 0]
    rows.sort(key=lambda r: -r["device_us"])
    print(f"{args.shape} plan {plan}: {sum(r['device_us'] for r in rows):.0f} µs of kernels")
    for r in rows[:25]:
        print(f"  {r['device_us']:9.1f} µs  x{r['calls']:<3d} {r['kernel'][:110]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "shape": args.shape, "plan": plan.__dict__,
                       "kernels": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
