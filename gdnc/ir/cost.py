"""Cost of one chunk program per chunk and value head: the work a kernel running it must do.

tensor-core MACs   every gemm, M·N·K
CUDA-core FLOPs    elementwise ops, reductions, cumsums, the triangular inverse (C³/3), exponent
                   arithmetic (a multiply by log2(e) per exp, one subtract per gated pair)
SFU calls          one ex2 per exponentiated element (C(C−1)/2 per scalar mask, ×K per-K)
C×C exps           the SFU calls of the C×C masks alone
HBM bytes          inputs read and outputs written (bf16 q, k, v, o and their gradients, fp32 gates),
                   plus 2× every tile handed between kernels through HBM (hbm ops)
serial chain       GEMMs on the longest path from the carried state in to the carried state out
positive exps      exponentials whose argument is not provably <= 0 (overflow risk)
q and k are counted once per value head (an upper bound under GVA).
"""
from __future__ import annotations

import dataclasses

from gdnc.ir.program import PAIR_GATES, Program
from gdnc.ir.program import CHUNK_SIZE

BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclasses.dataclass(frozen=True)
class Cost:
    tc_macs: int
    cuda_flops: int
    sfu: int
    cxc_exps: int
    hbm_bytes: int
    serial_gemms: int
    positive_exps: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def cost(p: Program, chunk_size: int = CHUNK_SIZE, K: int = 128, V: int = 128) -> Cost:
    C = chunk_size
    dims = {"C": C, "K": K, "V": V}  # the program's tile dimensions

    def numel(shape):
        n = 1
        for d in shape:
            n *= dims[d]
        return n

    p = p.live()
    shape = dict(p.inputs)
    tc = cuda = sfu = cxc = hbm = 0
    pairs = C * (C - 1) // 2
    for op in p.ops:
        shape[op.out] = op.shape
        at = dict(op.attrs)
        n = numel(op.shape)
        ins = [numel(shape[a]) for a in op.args]
        if op.kind == "gemm":
            a = shape[op.args[0]]
            tc += n * dims[a[0] if at.get("ta") else a[1]]
        elif op.kind == "exp":
            sfu += n
            cuda += n if at["base"] == "e" else 0
        elif op.kind in PAIR_GATES:
            per_pair = K if op.kind != "decay_mask" else 1
            exps = pairs * per_pair
            sfu += exps
            cxc += exps
            cuda += exps * (2 if at["base"] == "e" else 1) + (3 * C * C * K if op.kind != "decay_mask" else 0)
        elif op.kind == "tri_inverse":
            cuda += C ** 3 // 3
        elif op.kind == "decay_mask_grad":
            cuda += 3 * C * C
        elif op.kind == "hbm":
            hbm += 2 * n * BYTES[at["dtype"]]
        elif op.kind == "sum":
            cuda += n * (len(op.args) - 1)
        elif op.kind in ("rowsum", "colsum", "sum_all", "total", "cumsum"):
            cuda += ins[0]
        elif op.kind not in ("const", "fill", "shift", "tril", "cast"):
            cuda += n
    for name, s in p.inputs.items():
        if name in p.carried or name == "scale":
            continue
        hbm += numel(s) * (BYTES["fp32"] if len(s) == 1 or name.startswith("d_S") else BYTES["bf16"])
    for name, value in p.outputs.items():
        if value in p.carried.values() or name in p.carried.values():
            continue
        hbm += numel(shape[value]) * (BYTES["fp32"] if len(shape[value]) == 1 else BYTES["bf16"])
    return Cost(tc, cuda, sfu, cxc, hbm, serial_chain(p), len(positive_exponentials(p)))


def serial_chain(p: Program) -> int:
    """GEMMs on the longest path from the carried input to the carried output (-1: none)."""
    if not p.carried:
        return -1
    (start, end_name), = p.carried.items()
    depth = {start: 0}
    for op in p.ops:
        reached = [depth[a] for a in op.args if a in depth]
        if reached:
            depth[op.out] = max(reached) + (op.kind == "gemm")
    return depth.get(p.outputs.get(end_name, end_name), 0)


def positive_exponentials(p: Program) -> list[str]:
    """Exponentials whose argument is not provably <= 0, given log gates <= 0: a cumsum of them is
    non-increasing, so masked differences l_i − l_j (j <= i) are <= 0."""
    nonpos, nonincreasing = set(), set()
    log = p.value_of("log_decay")
    if log is not None:
        nonpos.add(log)
    risky = []
    for op in p.ops:
        at, args = dict(op.attrs), op.args
        if op.kind in ("cumsum", "total", "scale", "shift", "add", "sum") and args and all(a in nonpos for a in args) \
                and (op.kind != "scale" or at["value"] > 0):
            nonpos.add(op.out)
            if op.kind == "cumsum" and not at["reverse"] and not at["exclusive"] or \
                    op.kind == "shift" and not at["up"] and args[0] in nonincreasing:
                nonincreasing.add(op.out)
        if op.kind == "exp" and args[0] not in nonpos:
            risky.append(op.out)
        elif op.kind in PAIR_GATES:
            logs = args[:1] if op.kind == "decay_mask" else args[2:4] if op.kind == "gated_inner" else args[3:5]
            if not all(a in nonincreasing for a in logs):
                risky.append(op.out)
    return risky
