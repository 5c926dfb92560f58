"""gdnc's command line: list and show recurrences, check them against the references, write and
build their kernels, benchmark them."""
from __future__ import annotations

import argparse
import os
import sys


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
    from gdnc.emit.config import Heads

    ok = True
    heads = Heads(*map(int, args.heads.split("/")))
    for name in args.variants or ["gdn"]:
        rec = _variant(name)
        result = check_references(rec, T=args.T, chunk_size=args.chunk_size, seed=args.seed)
        print(result.summary(), flush=True)
        ok &= result.passed
        if not args.no_kernels:
            passed, report = check_kernels(rec, heads)
            print(report, flush=True)
            ok &= passed
    return 0 if ok else 1


def _cmd_explain(args) -> int:
    import json

    from gdnc.explain import explain, format_explain

    report = explain(_variant(args.variant), C=args.C, K=args.K, V=args.V)
    print(json.dumps(report, indent=1) if args.json else format_explain(report, show_programs=not args.costs_only))
    return 0


def _cmd_emit(args) -> int:
    from pathlib import Path

    from gdnc.emit.config import Heads
    from gdnc.ir.classify import UnsupportedRecurrence
    from gdnc.ops import op_sources

    rec = _variant(args.variant)
    try:
        sources = op_sources(rec, Heads(args.hq, args.hv, args.k, args.v, args.dtype), args.block_v)
    except (UnsupportedRecurrence, ValueError) as e:
        raise SystemExit(f"gdnc emit: {e}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for (kernel, variant), source in sources.items():  # the file name says the variant's config
        path = out / (f"{kernel}.py" if variant is None else f"{kernel}_{variant}.py")
        path.write_text(source)
        print(path)
    return 0


def _cmd_build(args) -> int:
    import time

    from gdnc.emit.build import cache_root, compile_many
    from gdnc.emit.config import Heads
    from gdnc.ir.library import get_variant
    from gdnc.ops import op_sources

    heads = [Heads(*map(int, spec.split("/"))) for spec in args.heads]
    start = time.perf_counter()
    # every forward and prepare config the op may pick (gdnc.plan), so a call never compiles on the GPU
    sources = {(h, variant, kernel): src for h in heads
               for (kernel, variant), src in op_sources(get_variant("gdn"), h).items()}
    print(f"gdnc build: {len(sources)} kernels for {len(heads)} head configuration(s), "
          f"{args.workers} workers, cache {cache_root()}", flush=True)
    def progress(done, key):
        h, variant, kernel = key
        label = "" if variant is None else f" ({variant})"
        print(f"  [{done}/{len(sources)}] {h.h_qk}/{h.h_v} {kernel}{label} ({time.perf_counter() - start:.0f}s)",
              flush=True)

    compile_many(sources, args.workers, get_variant("gdn").ir_hash, progress=progress)
    return 0


def _variant(name):
    from gdnc.ir import get_variant

    try:
        return get_variant(name)
    except ValueError as e:
        raise SystemExit(f"gdnc: {e}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gdnc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the built-in recurrences and their classification").set_defaults(func=_cmd_list)
    show = sub.add_parser("show", help="a recurrence, its classification and its derived chunked form")
    show.add_argument("variant")
    show.set_defaults(func=_cmd_show)
    check = sub.add_parser("check", help="check the chunked form against the token-by-token reference "
                                         "(float64, fresh random inputs, outputs and all gradients)")
    check.add_argument("variants", nargs="*", help="variants to check (default: gdn)")
    check.add_argument("--T", type=int, default=1000, help="tokens per sequence (default 1000)")
    check.add_argument("--chunk-size", type=int, default=64)
    check.add_argument("--seed", type=int, default=None, help="default: fresh inputs every run")
    check.add_argument("--heads", default="16/32", help="h_qk/h_v of the kernels to generate (default 16/32)")
    check.add_argument("--no-kernels", action="store_true", help="check the references only")
    check.set_defaults(func=_cmd_check)
    exp = sub.add_parser("explain", help="the chunk programs after each rewrite pass, with their costs")
    exp.add_argument("variant")
    exp.add_argument("--C", type=int, default=64)
    exp.add_argument("--K", type=int, default=128)
    exp.add_argument("--V", type=int, default=128)
    exp.add_argument("--json", action="store_true", help="machine-readable report")
    exp.add_argument("--costs-only", action="store_true", help="the cost table without the programs")
    exp.set_defaults(func=_cmd_explain)
    emit = sub.add_parser("emit", help="write a recurrence's TileLang kernels (rendered sources) for one head "
                                       "configuration, with the op's default configs")
    emit.add_argument("variant")
    emit.add_argument("--hq", type=int, required=True, help="q/k heads")
    emit.add_argument("--hv", type=int, required=True, help="value heads (a multiple of --hq)")
    emit.add_argument("--k", type=int, default=128, help="key head dim (default 128)")
    emit.add_argument("--v", type=int, default=128, help="value head dim (default 128)")
    emit.add_argument("--dtype", default="bfloat16", help="bfloat16 (default) or float16")
    emit.add_argument("--block-v", type=int, nargs="+", default=None,
                      help="forward V blocks to write (default: every one the op may pick)")
    emit.add_argument("--out", required=True, help="folder for the .py files")
    emit.set_defaults(func=_cmd_emit)
    build = sub.add_parser("build", help="compile the gdn kernels for head configurations ahead of time")
    build.add_argument("heads", nargs="+", help="h_qk/h_v pairs, e.g. 16/32 2/8")
    build.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    build.set_defaults(func=_cmd_build)
    sub.add_parser("bench", help="gdnc beside FlashQLA and FLA on the forward shapes (GPU); "
                                 "`gdnc bench --help` for its options", add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the benchmark parses its own options
        from gdnc.bench.run import main as bench_main

        return bench_main(argv[1:]) or 0
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
