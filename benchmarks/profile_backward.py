"""Device time of every kernel in one backward (or forward + backward) call through autograd, by
torch.profiler (CUDA activity), for gdnc and FlashQLA side by side on the same inputs and output
gradients (those of `gdnc bench --backward`):

    python benchmarks/profile_backward.py [--shape 16/32:32768 ...] [--provider gdnc FlashQLA]
                                          [--roles serial specialised] [--with-forward] [--launch-only] [--out F]
    python benchmarks/profile_backward.py --plot OUT.png RUNS.json[:LABEL] ...   # stacked bars of earlier runs

The backward alone replays the autograd graph of one forward kept (retain_graph), so it holds what
each library's backward launches: its states pass, its chain and its gradient kernels. With
--launch-only each call just runs twice (no torch.profiler, whose CUPTI session would clash with
Nsight Compute's): `ncu -k regex:gdn_backward -c 1 ... --launch-only` profiles one gdn_backward.
"""
import argparse
import functools
import sys

from profile_op import kernel_times
from script_io import parse_shape, write_out


def kernel_group(name: str) -> str:
    """A short name for a kernel of either library's backward, for the plot's legend."""
    for key, group in (("gdn_backward", "gdnc backward"), ("gdn_forward", "gdnc forward passes"),
                       ("cp_chain", "chains"), ("xmma_gemm", "chains"), ("fused_chunk_gdr_bwd", "FlashQLA backward"),
                       ("prepare_h", "FlashQLA states"), ("reduce", "GVA sums"), ("group_reduce", "GVA sums")):
        if key in name:
            return group
    return "other"


def plot(out: str, sources: list[str]) -> None:
    """Stacked bars of device time by kernel group, one bar per run of each file ("RUNS.json:LABEL": the
    label marks gdnc's runs, e.g. the commit they ran)."""
    import json

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars, groups = [], {}
    for source in sources:
        path, _, label = source.partition(":")
        report = json.load(open(path))
        for run in report["runs"]:
            parts = {}
            for row in run["kernels"]:
                parts[kernel_group(row["kernel"])] = parts.get(kernel_group(row["kernel"]), 0) + row["device_us"] / 1e3
            heads, lengths = run["shape"].split(":")
            lengths = lengths.split("+")
            shape = f"{heads} {len(lengths)}×{lengths[0]}" if len(set(lengths)) == 1 else run["shape"]
            # the label tells gdnc's versions apart; the peers ran the same code in every file
            mine = label and run["provider"] == "gdnc"
            name = f"{run['provider']}{' ' + label if mine else ''}\n{shape}"
            bars.append((name, parts))
            groups.update(dict.fromkeys(parts))
    fig, ax = plt.subplots(figsize=(1.3 * len(bars) + 2, 4.5))
    bottom = [0.0] * len(bars)
    for group in groups:
        heights = [parts.get(group, 0.0) for _, parts in bars]
        ax.bar(range(len(bars)), heights, bottom=bottom, label=group)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(range(len(bars)), [name for name, _ in bars], fontsize=7)
    ax.set_ylabel("device time of one backward (ms)")
    ax.set_title(f"GDN backward by kernel, {report['device']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--plot"]:
        plot(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", nargs="+", default=["16/32:32768"], help="h_qk/h_v:len[+len...]")
    parser.add_argument("--provider", nargs="+", default=["gdnc", "FlashQLA"], choices=["gdnc", "FlashQLA", "FLA"])
    parser.add_argument("--with-forward", action="store_true",
                        help="profile forward + backward, not the backward alone")
    parser.add_argument("--roles", nargs="+", default=[None], choices=["serial", "specialised"],
                        help="gdnc: its backward's builds to profile one after another (BackwardConfig.roles; "
                             "default: the op's)")
    parser.add_argument("--launch-only", action="store_true", help="run each call twice, no profiler, no timing")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    from gdnc.bench.backward import _autograd_step, inputs, providers
    from gdnc.bench.shapes import Shape
    from gdnc.bench.timing import time_calls
    from gdnc.runtime.policy import HeuristicPolicy

    found = []
    for name, fn, path in providers(args.provider):
        if name != "gdnc" or fn is None:
            found.append((name, fn, path))
            continue
        for roles in args.roles:  # one gdnc run per backward build, named by it where one is chosen
            policy = None if roles is None else HeuristicPolicy(backward={"roles": roles})
            found.append((name if roles is None else f"gdnc {roles}", functools.partial(fn, policy=policy),
                          path if roles is None else f"{path}, BackwardConfig(roles={roles!r})"))
    runs = []
    for text in args.shape:
        hq, hv, lengths = parse_shape(text)
        x = inputs(Shape(hq, hv, lengths), torch.Generator("cuda").manual_seed(0))
        for name, fn, path in found:
            if fn is None:
                print(f"{name}: {path}")
                continue
            call = _autograd_step(fn, x, retain=not args.with_forward)
            if args.launch_only:
                call(), call()
                torch.cuda.synchronize()
                continue
            rows = kernel_times(call)
            total = sum(r["device_us"] for r in rows)
            timing = time_calls([call])
            print(f"{name} {text} {'fwd+bwd' if args.with_forward else 'bwd'}: {timing.ms:.3f} ms ({timing.method}), "
                  f"{total:.0f} µs of kernels in "
                  f"{sum(r['calls'] for r in rows)} launches")
            for r in rows[:14]:
                print(f"  {r['device_us']:9.1f} µs  x{r['calls']:<3d} {r['kernel'][:110]}")
            runs.append({"provider": name, "path": path, "shape": text, "with_forward": args.with_forward,
                         "timing": timing.as_dict(), "total_us": total, "kernels": rows})
    write_out(args.out, {"device": torch.cuda.get_device_name(), "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
