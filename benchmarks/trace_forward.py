"""Where a chunk's time goes in the fused forward: the trace build of gdn_forward (ForwardConfig.trace)
records the SM clock as each role of the first CTA passes its waits and GEMMs; this prints, per
role, the median cycles between consecutive points, the median period per chunk, and when each
point is passed relative to the state role's "stage full" of the same chunk.

    python benchmarks/trace_forward.py --compile-only   # fill the kernel cache (CPU is enough)
    python benchmarks/trace_forward.py [--out trace.json]   # on a Hopper GPU
"""
import argparse
import sys

from script_io import write_out

from gdnc.emit.cache import build_many, render_job
from gdnc.emit.config import DEFAULT_REGISTERS, ForwardConfig, Heads, PrepareConfig

# h_qk, h_v, seqs, tokens each, block_v
SHAPES = [(16, 32, 1, 8192, 32), (16, 32, 4, 8192, 64), (16, 32, 4, 8192, 128), (2, 8, 1, 8192, 32)]
# what each role has just done at each trace point (gdn_forward.py.jinja, mark(...))
POINTS = {
    "state": ["stage full", "Ŝ free", "Ŝ written", "K Ŝ", "W formed, W free", "W, X̃ ready", "S += X̃ᵀ W"],
    "prepare": ["stage full", "X̃ GEMM", "X̃ free", "Q Kᵀ masked, P free", "P stored"],
    "output": ["stage full", "Ŝ ready", "Q Ŝ", "P ready", "M formed, W ready", "M W", "O stored"],
    "loader": ["stage free", "TMA issued"],
}
# m_role="prepare": the prepare role forms M, the output role waits for it
M_ON_PREPARE_POINTS = {"prepare": ["stage full", "X̃ GEMM", "X̃ free", "Q Kᵀ masked", "M stored"],
                       "output": ["stage full", "Ŝ ready", "Q Ŝ", "M ready", "W ready", "M W", "O stored"]}
# pair_gates="loader": loader warp 2 passes two more points (its gate ring)
LOADER_GATE_POINTS = ["gates: buffer free", "gates ready"]


def points_of(config):
    """The named trace points of each role in the build of ``config``."""
    if config.m_role == "prepare":
        return dict(POINTS, **M_ON_PREPARE_POINTS)
    if config.pair_gates == "loader":
        return dict(POINTS, loader=POINTS["loader"] + LOADER_GATE_POINTS)
    return POINTS


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pair-gates", default="output", choices=["output", "loader"])
    parser.add_argument("--m-role", default=None, choices=["output", "prepare"],
                        help="ForwardConfig.m_role (default: each width's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    # keyed by heads and width: two shapes of one head configuration may trace different widths
    # --m-role where that width has a budget for it, else the width's default
    configs = {(hq, hv, bv): ForwardConfig(block_v=bv, trace=True, pair_gates=args.pair_gates,
                                           m_role=args.m_role if (bv, args.m_role) in DEFAULT_REGISTERS else None)
               for hq, hv, _, _, bv in SHAPES}
    jobs = [render_job("gdn", "gdn_forward", Heads(*key[:2]), cfg) for key, cfg in configs.items()]
    jobs += [render_job("gdn", "gdn_prepare", Heads(*key[:2]), PrepareConfig()) for key in configs]
    build_many(jobs, args.workers)
    if args.compile_only:
        return 0

    import torch

    from gdnc.bench.shapes import Shape, make_inputs
    from gdnc.emit.cache import library_signature, load
    from gdnc.reference.problem import check_arguments
    from gdnc.runtime.buffers import output_allocator
    from gdnc.runtime.forward import prepare

    clock_ghz = torch.cuda.get_device_properties(0).clock_rate / 1e6  # kHz -> GHz
    report = {"device": torch.cuda.get_device_name(), "clock_ghz": clock_ghz, "pair_gates": args.pair_gates,
              "shapes": []}
    generator = torch.Generator("cuda").manual_seed(0)
    for hq, hv, n, t, bv in SHAPES:
        T = n * t
        cu = torch.arange(n + 1, device="cuda", dtype=torch.int32) * t
        inputs = make_inputs(Shape(hq, hv, (t,) * n), generator, cu_seqlens=cu)
        q, k, v, g, beta = (inputs[name] for name in ("q", "k", "v", "g", "beta"))
        s = check_arguments(library_signature("gdn"), q, k, v, scale=None, initial_state=None, cu_seqlens=cu,
                            inputs={"g": g, "beta": beta})
        prep = prepare(load("gdn", "gdn_prepare", Heads(hq, hv), PrepareConfig()), k, g, beta, s, cu,
                       output_allocator("cuda", poison=False))
        gdn_forward = load("gdn", "gdn_forward", Heads(hq, hv), configs[(hq, hv, bv)])
        chunks = t // 64
        trace = torch.zeros(4, chunks, 8, dtype=torch.int64, device="cuda")
        o = torch.empty(T, hv, 128, dtype=q.dtype, device="cuda")
        ht = torch.empty(n, hv, 128, 128, dtype=torch.float32, device="cuda")
        h0 = torch.zeros(n, hv, 128, 128, dtype=torch.float32, device="cuda")
        rows = torch.arange(n, dtype=torch.int32, device="cuda")  # each sequence's final state to its row
        for _ in range(2):  # the second run is the one kept: caches and clocks warm (zero_start 0: from h0)
            gdn_forward(q=q.reshape(T, hq, 128), k=prep["k"], v=v.reshape(T, hv, 128), l2_gate=prep["l2_gate"],
                        beta=prep["beta"], a_free=prep["a_free"], seq_start=cu, seq_end=cu, end_offset=1,
                        zero_start=0, initial_state=h0, scale=s.scale, o=o, final_row=rows, final_state=ht,
                        trace=trace)
        torch.cuda.synchronize()
        stamps = trace.cpu()
        steady = slice(chunks // 4, chunks)  # past the pipeline's fill
        shape = {"shape": f"{hq}/{hv} {n}x{t}", "block_v": bv, "roles": {}}
        shape["m_role"] = configs[(hq, hv, bv)].m_role
        for role, (name, points) in enumerate(points_of(configs[(hq, hv, bv)]).items()):
            st = stamps[role, steady, :len(points)].double()
            steps = (st[:, 1:] - st[:, :-1]).median(0).values.tolist()
            period = (st[1:, 0] - st[:-1, 0]).median().item()
            # when each point is passed, relative to the state role's "stage full" of the same chunk: which
            # role is behind, and what the chain waits for
            offsets = (st - stamps[0, steady, :1].double()).median(0).values.tolist()
            shape["roles"][name] = {"period_cycles": period, "steps_cycles": dict(zip(points[1:], steps)),
                                    "offsets_cycles": dict(zip(points, offsets))}
            print(f"{shape['shape']} bv={bv} {name:8s} period {period:7.0f} cyc ({period / clock_ghz / 1e3:.2f} µs): "
                  + ", ".join(f"{p} {c:.0f}" for p, c in zip(points[1:], steps)), flush=True)
            print(" " * 22 + "at (from the state's stage full): "
                  + ", ".join(f"{p} {c:+.0f}" for p, c in zip(points, offsets)), flush=True)
        report["shapes"].append(shape)
    write_out(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
