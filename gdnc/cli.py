"""gdnc's command line: list and show recurrences, check them against the references, write and
build their kernels, benchmark them. Every error is one line on stderr and a non-zero exit."""
from __future__ import annotations

import argparse
import os
import sys


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (and exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _heads(text: str):
    from gdnc.emit.config import Heads

    try:
        return Heads.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_list(args) -> int:
    from gdnc.ir import classify, get_variant, variants

    for name in variants():
        rec = get_variant(name)
        axes = classify(rec).axes()
        print(f"{name:<12} decay={axes['decay']:<7} transition={axes['transition']:<19} {rec.description}")
    return 0


def _cmd_show(args) -> int:
    from gdnc.ir import classify
    from gdnc.ir.describe import describe

    print(describe(classify(_variant(args.variant))))
    return 0


def _cmd_check(args) -> int:
    from gdnc.check import check_kernels, check_references

    ok = True
    for name in args.variants or ["gdn"]:
        rec = _variant(name)
        result = check_references(rec, T=args.T, chunk_size=args.chunk_size, seed=args.seed)
        print(result.summary(), flush=True)
        ok &= result.passed
        if not args.no_kernels:
            passed, report = check_kernels(rec, args.heads, workers=args.workers)
            print(report, flush=True)
            ok &= passed
    return 0 if ok else 1


def _cmd_explain(args) -> int:
    import json

    from gdnc.passes.explain import explain, format_explain

    report = explain(_variant(args.variant), chunk_size=args.chunk_size, K=args.K, V=args.V)
    print(json.dumps(report, indent=1) if args.json else format_explain(report, show_programs=not args.costs_only))
    return 0


def _cmd_emit(args) -> int:
    from pathlib import Path

    from gdnc.emit.cache import render_job
    from gdnc.emit.config import Heads
    from gdnc.emit.registry import spec
    from gdnc.runtime.policy import DEFAULT_POLICY, HeuristicPolicy

    rec = _variant(args.variant)
    heads = Heads(args.hq, args.hv, args.k, args.v, args.dtype)
    # the op's candidates, or theirs with the forward at each V block asked for
    policies = [HeuristicPolicy(forward={"block_v": w}) for w in args.block_v] if args.block_v else [DEFAULT_POLICY]
    candidates = dict.fromkeys(c for policy in policies for c in policy.candidates(heads))
    jobs = [render_job(rec, kernel, heads, config) for kernel, config in candidates]  # all rendered, then written
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for job in jobs:  # the file name says the variant's config
        label = spec(job.kernel).label(job.config)
        path = out / (f"{job.kernel}.py" if label is None else f"{job.kernel}_{label}.py")
        path.write_text(job.source)
        print(path)
    return 0


def _cmd_build(args) -> int:
    import time

    from gdnc.check import job_label, op_jobs
    from gdnc.emit.cache import build_many, cache_root

    start = time.perf_counter()
    # every forward and prepare config the op may pick (gdnc.runtime.policy), so a call never compiles on the GPU
    jobs = [job for heads in args.heads for job in op_jobs("gdn", heads)]
    print(f"gdnc build: {len(jobs)} kernels for {len(args.heads)} head configuration(s), {args.workers} workers, "
          f"cache {cache_root()}", flush=True)

    def progress(done, job):
        print(f"  [{done}/{len(jobs)}] {job.heads.h_qk}/{job.heads.h_v} {job_label(job)} "
              f"({time.perf_counter() - start:.0f}s)", flush=True)

    built = build_many(jobs, args.workers, progress=progress)
    print(f"gdnc build: {built} compiled, {len(jobs) - built} already in the cache "
          f"({time.perf_counter() - start:.0f}s)")
    return 0


def _variant(name):
    from gdnc.ir import get_variant

    return get_variant(name)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gdnc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="the built-in recurrences and their classification").set_defaults(func=_cmd_list)
    show = sub.add_parser("show", help="a recurrence, its classification and its derived chunked form")
    show.add_argument("variant")
    show.set_defaults(func=_cmd_show)
    check = sub.add_parser("check", help="check the chunked form against the token-by-token reference "
                                         "(float64, fresh random inputs, outputs and all gradients), then "
                                         "generate and build the kernels (and run them on a Hopper GPU)")
    check.add_argument("variants", nargs="*", help="variants to check (default: gdn)")
    check.add_argument("--T", type=_positive, default=1000, help="tokens per sequence (default 1000)")
    check.add_argument("--chunk-size", type=_positive, default=64)
    check.add_argument("--seed", type=int, default=None, help="default: fresh inputs every run")
    check.add_argument("--heads", type=_heads, default="16/32",
                       help="h_qk/h_v of the kernels to generate (default 16/32)")
    check.add_argument("--workers", type=_positive, default=os.cpu_count() or 1,
                       help="processes building the kernels (default: one a CPU)")
    check.add_argument("--no-kernels", action="store_true", help="check the references only")
    check.set_defaults(func=_cmd_check)
    exp = sub.add_parser("explain", help="the chunk programs after each rewrite pass, with their costs")
    exp.add_argument("variant")
    exp.add_argument("--chunk-size", type=_positive, default=64)
    exp.add_argument("--K", type=_positive, default=128)
    exp.add_argument("--V", type=_positive, default=128)
    exp.add_argument("--json", action="store_true", help="machine-readable report")
    exp.add_argument("--costs-only", action="store_true", help="the cost table without the programs")
    exp.set_defaults(func=_cmd_explain)
    emit = sub.add_parser("emit", help="write a recurrence's TileLang kernels (rendered sources) for one head "
                                       "configuration, with the op's default configs")
    emit.add_argument("variant")
    emit.add_argument("--hq", type=_positive, required=True, help="q/k heads")
    emit.add_argument("--hv", type=_positive, required=True, help="value heads (a multiple of --hq)")
    emit.add_argument("--k", type=_positive, default=128, help="key head dim (default 128; the forward takes 128 only)")
    emit.add_argument("--v", type=_positive, default=128, help="value head dim (default 128)")
    emit.add_argument("--dtype", default="bfloat16", help="bfloat16 (default) or float16")
    emit.add_argument("--block-v", type=_positive, nargs="+", default=None,
                      help="forward V blocks to write (default: every one the op may pick)")
    emit.add_argument("--out", required=True, help="folder for the .py files")
    emit.set_defaults(func=_cmd_emit)
    build = sub.add_parser("build", help="compile the gdn kernels for head configurations ahead of time")
    build.add_argument("heads", nargs="+", type=_heads, help="h_qk/h_v pairs, e.g. 16/32 2/8")
    build.add_argument("--workers", type=_positive, default=os.cpu_count() or 1)
    build.set_defaults(func=_cmd_build)
    sub.add_parser("bench", help="gdnc beside FlashQLA and FLA on the forward shapes (GPU); "
                                 "`gdnc bench --help` for its options", add_help=False)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:  # the benchmark parses its own options
            from gdnc.bench.run import main as bench_main

            return bench_main(argv[1:]) or 0
        args = _parser().parse_args(argv)
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (`gdnc list | head -1`): stop quietly, and keep Python's exit-time
        # flush of stdout from failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, TypeError, OSError) as e:
        command = f"gdnc {argv[0]}" if argv else "gdnc"
        print(f"{command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
