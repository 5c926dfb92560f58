"""Device time of every kernel in one forward call, by torch.profiler (CUDA activity), per shape.

    python benchmarks/profile_op.py [--shape 2/8:32768 ...] [--provider gdnc|FlashQLA ...]
                                    [--segment-len N ...] [--block-v BV] [--forward KEY=VALUE ...]
                                    [--prepare CONFIG ...] [--out F]

gdnc runs its plan (or each --segment-len: 0 unsplit, N forced segments, at --block-v) with the
forward's default config (or --forward's fields, e.g. m_role=prepare, pair_gates=loader) and
gdn_prepare's as the plan picks it, or each --prepare config in turn ("plan", or PrepareConfig fields as
KEY=VALUE[,KEY=VALUE...], e.g. heads_per_cta=group,order=head or inverse=substitution); FlashQLA
runs its own chunk_gated_delta_rule with its default intra-card CP, so the two breakdowns sit side
by side. Each call is also timed by the benchmark's
time_calls (CUDA-graph replays, medians), on one input set: shapes that fit in L2 then run from it,
unlike in the benchmark, which rotates input sets.
"""
import argparse
import dataclasses
import sys

from script_io import parse_shape, write_out


def gdnc_call(inputs, forward: dict, prepare: dict, segment_len, block_v):
    """A no-argument call of gdnc's kernels on inputs, with the heuristic's plan under these fixed
    ForwardConfig and PrepareConfig fields (or a forced split: segment_len 0 unsplit, N in segments of
    N tokens, at block_v), and that plan as a dict."""
    from gdnc.runtime.ops import kernel_call
    from gdnc.runtime.plan import SplitConfig
    from gdnc.runtime.policy import HeuristicPolicy

    q, k, v, g, beta, h0, cu = (inputs[n] for n in ("q", "k", "v", "g", "beta", "initial_state", "cu_seqlens"))
    if segment_len is None:
        policy = HeuristicPolicy(forward=forward, prepare=prepare)
    else:  # the forced split keeps the heuristic's gdn_prepare
        policy = HeuristicPolicy(SplitConfig(segment_len=segment_len), {**forward, "block_v": block_v}, prepare)
    plan, call = kernel_call(q, k, v, g, beta, h0, True, cu, policy=policy)
    return call, dataclasses.asdict(plan)


def peer_call(inputs, provider):
    from gdnc.bench.peers import load_providers

    fn = next(p for p in load_providers(smoke_test=False) if p.name == provider).fn
    if fn is None:
        raise SystemExit(f"provider {provider!r} is not available here")
    q, k, v, g, beta, h0, cu = (inputs[n] for n in ("q", "k", "v", "g", "beta", "initial_state", "cu_seqlens"))
    return lambda: fn(q, k, v, g, beta, None, h0, True, cu)


def config_fields(items, group):
    """Config fields from "KEY=VALUE" items: integers where the value is one, "group" the shape's
    h_v / h_qk (heads_per_cta=group: every value head of a k head)."""
    fields = dict(item.split("=", 1) for item in items)
    value = lambda v: group if v == "group" else int(v) if v.isdigit() else v  # noqa: E731
    return {key: value(v) for key, v in fields.items()}


def prepare_options(text, group):
    """PrepareConfig fields from "plan" (the plan picks heads_per_cta, the rest default) or
    "KEY=VALUE[,KEY=VALUE...]"."""
    return {} if text == "plan" else config_fields(text.split(","), group)


def kernel_times(call):
    """[{kernel, calls, device_us}] of one call after three warm-up calls, costliest first."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    rows = [{"kernel": e.key, "calls": e.count, "device_us": e.device_time_total}
            for e in prof.key_averages() if e.device_time_total > 0]
    return sorted(rows, key=lambda r: -r["device_us"])


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", nargs="+", default=["2/8:32768"], help="h_qk/h_v:len[+len...]")
    parser.add_argument("--provider", nargs="+", default=["gdnc"], choices=["gdnc", "FlashQLA"])
    parser.add_argument("--segment-len", type=int, nargs="+", default=[None],
                        help="gdnc: force a split, each in turn (0: unsplit)")
    parser.add_argument("--block-v", type=int, default=128, help="gdnc: the V block of a forced plan")
    parser.add_argument("--forward", nargs="*", default=[], metavar="KEY=VALUE",
                        help="gdnc: ForwardConfig fields fixed over the heuristic's (HeuristicPolicy.forward)")
    parser.add_argument("--prepare", nargs="+", default=["plan"], metavar="CONFIG",
                        help="gdnc: gdn_prepare configs to profile one after another (HeuristicPolicy.prepare): "
                             "'plan' or KEY=VALUE[,KEY=VALUE...]")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    from gdnc.bench.shapes import Shape, make_inputs
    from gdnc.bench.timing import time_calls

    runs = []
    for text in args.shape:
        hq, hv, lengths = parse_shape(text)
        shape = Shape(hq, hv, lengths)
        inputs = make_inputs(shape, torch.Generator("cuda").manual_seed(0))
        prepares = {text: prepare_options(text, hv // hq) for text in args.prepare}
        gdnc_runs = [("gdnc", name, n) for name in prepares for n in args.segment_len if "gdnc" in args.provider]
        for provider, prepare, segment_len in gdnc_runs + [(p, None, None) for p in args.provider if p != "gdnc"]:
            plan = None
            if provider == "gdnc":
                forward = config_fields(args.forward, hv // hq)
                call, plan = gdnc_call(inputs, forward, prepares[prepare], segment_len, args.block_v)
            else:
                call = peer_call(inputs, provider)
            rows = kernel_times(call)
            total = sum(r["device_us"] for r in rows)
            timing = time_calls([call])
            label = provider if prepare is None else f"{provider} [prepare {prepare}]"
            print(f"{label} {text} plan {plan}: {timing.ms:.3f} ms ({timing.method}), {total:.0f} µs of kernels in "
                  f"{sum(r['calls'] for r in rows)} launches")
            for r in rows[:12]:
                print(f"  {r['device_us']:9.1f} µs  x{r['calls']:<3d} {r['kernel'][:110]}")
            runs.append({"provider": provider, "shape": text, "plan": plan, "timing": timing.as_dict(), "total_us": total,
                         "prepare": None if prepare is None else prepares[prepare], "kernels": rows})
    write_out(args.out, {"device": torch.cuda.get_device_name(), "forward": args.forward, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
