"""Typed configurations of the kernel templates: the head shapes a kernel is built for, and the
tunables of each template (also the autotuner's search space). Every kernel's chunk is
gdnc.ir.program.CHUNK_SIZE (the wgmma tile: not a tunable)."""
from __future__ import annotations

import dataclasses

from gdnc.ir.program import CHUNK_SIZE

DTYPES = {"bfloat16": "bf16", "float16": "fp16"}


@dataclasses.dataclass(frozen=True)
class Heads:
    """What a compiled kernel is specialised to: q/k heads, value heads, key and value dims, dtype."""

    h_qk: int
    h_v: int
    k_dim: int = 128
    v_dim: int = 128
    dtype: str = "bfloat16"

    def __post_init__(self):
        for name in ("h_qk", "h_v", "k_dim", "v_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Heads.{name} must be a positive int, got {value!r}")
        if self.h_v % self.h_qk:
            raise ValueError(f"Heads: h_v={self.h_v} must be a multiple of h_qk={self.h_qk} (GVA)")
        if self.dtype not in DTYPES:
            raise ValueError(f"Heads.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")

    @property
    def group(self) -> int:
        return self.h_v // self.h_qk

    @classmethod
    def parse(cls, text: str, **dims) -> "Heads":
        """Heads from "h_qk/h_v" ("16/32"), with the other fields from ``dims``; ValueError naming
        what is wrong."""
        parts = text.split("/") if isinstance(text, str) else []
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"expected heads as h_qk/h_v, e.g. 16/32, got {text!r}")
        return cls(int(parts[0]), int(parts[1]), **dims)


# the most gdn_prepare CTAs per SM before ptxas spills (nvcc 13.0): 5 leave 96 registers a thread
# and the blocked inverse spills, 4 leave 128 and the substitution's column of A spills
MAX_PREPARE_CTAS_PER_SM = {"blocked": 4, "substitution": 3}


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Per chunk and value head: the gate-free inverse A = (I + StrictLower(diag(β) K Kᵀ))⁻¹ and
    the cumulative log2 gate.

    threads: CUDA threads per CTA (K Kᵀ on one warpgroup's wgmma; one thread per column of A in the
             substitution, one per row in the cumsum)
    ctas_per_sm: CTAs the register budget must let share an SM (__launch_bounds__'s minimum): the
             substitution is one warp per scheduler per CTA, latency-bound, so occupancy is its speed.
             None: the most that do not spill (MAX_PREPARE_CTAS_PER_SM; the blocked inverse takes
             114 registers)
    inverse: "substitution" (one thread per column of A, 2016 dependent updates each, fp32) or
             "blocked" (16×16 diagonal blocks by substitution on 64 threads, then the merges of block
             pairs, A21 = −A22 (L21 A11), on all threads: width 16 on CUDA cores in fp32, width 32 on
             tensor cores in TF32)
    heads_per_cta: value heads one CTA prepares, all of one k head (a divisor of h_v / h_qk): they share
             the CTA's k tile and K Kᵀ, so k is loaded and K Kᵀ formed once for them, not once a head;
             each head's β, inverse and cumsum then run one after another
    order: which CTAs run next to each other. "chunk": the chunks of one value head (a 2-D grid,
             head slowest); "head": the value heads of one chunk (a 1-D grid, head fastest), so the
             h_v / h_qk heads that share a chunk of k (GVA) run together and read it from HBM about
             once instead of once each. Measured slower (benchmarks/NOTES.md), so not the default.
    """

    threads: int = 2 * CHUNK_SIZE
    ctas_per_sm: int | None = None
    inverse: str = "blocked"
    heads_per_cta: int = 1
    order: str = "chunk"

    def __post_init__(self):
        if self.ctas_per_sm is None:
            # stays None for an unknown inverse, which check() refuses
            object.__setattr__(self, "ctas_per_sm", MAX_PREPARE_CTAS_PER_SM.get(self.inverse))

    def check(self, heads: Heads) -> None:
        if self.threads != 2 * CHUNK_SIZE:
            raise ValueError(f"PrepareConfig.threads must be 2 × the chunk = {2 * CHUNK_SIZE}, got {self.threads}")
        if heads.k_dim % 64:
            raise ValueError(f"the prepare kernel needs K a multiple of 64, got K={heads.k_dim}")
        if self.inverse not in ("substitution", "blocked"):
            raise ValueError(f"PrepareConfig.inverse must be 'substitution' or 'blocked', got {self.inverse!r}")
        if not isinstance(self.heads_per_cta, int) or self.heads_per_cta < 1 or heads.group % self.heads_per_cta:
            raise ValueError(f"PrepareConfig.heads_per_cta must divide h_v / h_qk = {heads.group} (the value heads "
                             f"sharing one k head), got {self.heads_per_cta!r}")
        if self.order not in ("chunk", "head"):
            raise ValueError(f"PrepareConfig.order must be 'chunk' or 'head', got {self.order!r}")
        if not 1 <= self.ctas_per_sm <= MAX_PREPARE_CTAS_PER_SM[self.inverse]:
            most = MAX_PREPARE_CTAS_PER_SM
            raise ValueError(f"PrepareConfig.ctas_per_sm must be in 1..{most['blocked']} for the blocked inverse, "
                             f"1..{most['substitution']} for the substitution (more spill), got {self.ctas_per_sm} "
                             f"for {self.inverse!r}")


FORWARD_WIDTHS = (32, 64, 128)  # the V blocks the forward has register budgets for
# which role forms M where m_role is not given
DEFAULT_M_ROLE = {32: "output", 64: "output", 128: "prepare"}
# setmaxnreg budgets (state, prepare, output, loader) per (block_v, m_role) that fit 4 warpgroups in
# the 64K-register file with no spills (nvcc 13.0). At 128 the state role holds S and K Ŝ (192 fp32 a
# thread; 224 spills), so M moves to the prepare role to leave the output role only O (104 spills)
DEFAULT_REGISTERS = {(32, "output"): (160, 152, 160, 40), (32, "prepare"): (160, 152, 160, 40),
                     (64, "output"): (184, 152, 136, 40), (64, "prepare"): (184, 152, 136, 40),
                     (128, "prepare"): (232, 128, 112, 40)}
REGISTER_FILE = 65536


@dataclasses.dataclass(frozen=True)
class ForwardConfig:
    """The fused forward kernel: one CTA per (value block, value head, sequence), serial over chunks,
    four warpgroups (state, prepare, output, loader) of 128 threads.

    block_v:   V columns per CTA, one of FORWARD_WIDTHS (V is split across CTAs when there are few
               (sequence, head) pairs)
    m_role:    the role that forms M = scale · G ⊙ (tril(Q Kᵀ) A) · 1βᵀ: "output" (from the prepare
               role's tril(Q Kᵀ) tile) or "prepare" (from its Q Kᵀ in registers, handing M over as a
               tile; each role then frees the input stage as soon as it has read it). None:
               DEFAULT_M_ROLE[block_v]
    registers: per-thread register budget of each role (state, prepare, output, loader), set with
               setmaxnreg (.inc above the launch's 128, .dec below); None: DEFAULT_REGISTERS
    trace:     a profiling build: the kernel takes a trace [4, chunks, 8] int64 tensor and records
               the SM clock as each role of the first CTA passes its waits and GEMMs
               (benchmarks/trace_forward.py); the op never runs it
    pair_gates: who exponentiates M's C² pair gates: "output" (the output role, in M's registers) or
               "loader" (loader warps 2 and 3, a chunk ahead, into a 36 KB shared ring of their own,
               with the stage released as soon as each role has read it). "loader" measured slower
               (benchmarks/NOTES.md), so not the default
    store_states: the backward's states pass: the state role also stores every chunk's start state Ŝ
               (bf16) to states [S, HV, K, V] at row state_slot[range] + chunk
    """

    block_v: int = 64
    registers: tuple[int, int, int, int] | None = None
    trace: bool = False
    pair_gates: str = "output"
    m_role: str | None = None
    store_states: bool = False

    def __post_init__(self):
        # unknown widths and roles stay None, which check() refuses
        if self.m_role is None:
            object.__setattr__(self, "m_role", DEFAULT_M_ROLE.get(self.block_v))
        if self.registers is None:
            object.__setattr__(self, "registers", DEFAULT_REGISTERS.get((self.block_v, self.m_role)))

    @property
    def snapshots(self) -> int:
        """Buffers of Ŝ: two let the state role write chunk c + 1's while the output role reads c's;
        at 128 columns two do not fit in shared memory with the rest."""
        return 1 if self.block_v == 128 else 2

    def check(self, heads: Heads) -> None:
        if self.block_v not in FORWARD_WIDTHS or heads.v_dim % self.block_v:
            raise ValueError(f"ForwardConfig.block_v must be one of {FORWARD_WIDTHS} and divide "
                             f"V={heads.v_dim}, got {self.block_v}")
        if self.m_role not in ("output", "prepare"):
            raise ValueError(f"ForwardConfig.m_role must be 'output' or 'prepare', got {self.m_role!r}")
        if self.pair_gates == "loader" and self.m_role != "output":
            raise ValueError("ForwardConfig.pair_gates='loader' needs m_role='output' (the loader's gates "
                             f"scale the output role's M), got m_role={self.m_role!r}")
        regs = self.registers
        if regs is None:
            raise ValueError(f"ForwardConfig.registers: no default for block_v={self.block_v} with "
                             f"m_role={self.m_role!r} (DEFAULT_REGISTERS); give the four budgets")
        if len(regs) != 4 or any(r % 8 or not 24 <= r <= 256 for r in regs) or 128 * sum(regs) > REGISTER_FILE:
            raise ValueError(f"ForwardConfig.registers must be 4 multiples of 8 in [24, 256] summing to at most "
                             f"{REGISTER_FILE // 128} (the register file over 4 warpgroups), got {regs}")
        if heads.k_dim != 128:
            raise ValueError(f"the forward kernel is written for K = 128, got K={heads.k_dim}")
        if self.pair_gates not in ("output", "loader"):
            raise ValueError(f"ForwardConfig.pair_gates must be 'output' or 'loader', got {self.pair_gates!r}")


BACKWARD_ROLES = ("serial", "specialised")
# setmaxnreg budgets (chain, value, pairs, loader) of the specialised backward (nvcc 13.0): the chain
# holds dS (128 fp32 a thread; 152 spills 1.5 KB), the value role one [C, 128] accumulator at a time,
# the pairs role C×C tiles beside one (184 spills), the loader's barrier loop 40 (32 spills)
DEFAULT_BACKWARD_REGISTERS = (160, 120, 192, 40)


@dataclasses.dataclass(frozen=True)
class BackwardConfig:
    """The backward over chunks in reverse: one CTA per (value head, sequence), the fp32 state
    gradient dS [K, V] in registers.

    roles:     "serial": two warpgroups hold dS and run every GEMM of a chunk one after another;
               "specialised": four warpgroups (chain: dS; value: dV', dv and dk; pairs: the C×C
               products, dq and dβ; loader: the loads, and each chunk's dg), handing tiles over
               through shared memory, each input refilled as soon as its readers are done with it
    registers: the specialised build's per-thread budgets (chain, value, pairs, loader), set with
               setmaxnreg; None: DEFAULT_BACKWARD_REGISTERS (the serial build leaves them to nvcc)
    state_gradient_only: only the chain of dS (context parallelism's local state gradients,
               gdnc.runtime.cp_backward): no states, no token gradients, 6 of the 21 GEMMs a chunk;
               a serial build
    """

    roles: str = "serial"
    registers: tuple[int, int, int, int] | None = None
    state_gradient_only: bool = False

    def __post_init__(self):
        if self.registers is None and self.roles == "specialised":
            object.__setattr__(self, "registers", DEFAULT_BACKWARD_REGISTERS)

    @property
    def threads(self) -> int:
        """CUDA threads per CTA: two warpgroups (serial) or four (specialised)."""
        return 256 if self.roles == "serial" else 512

    def check(self, heads: Heads) -> None:
        if self.roles not in BACKWARD_ROLES:
            raise ValueError(f"BackwardConfig.roles must be one of {BACKWARD_ROLES}, got {self.roles!r}")
        if self.roles == "specialised":
            if self.state_gradient_only:
                raise ValueError("BackwardConfig.state_gradient_only is a serial build (roles='serial'): the "
                                 "chain of dS alone has nothing to specialise")
            regs = self.registers
            if len(regs) != 4 or any(r % 8 or not 24 <= r <= 256 for r in regs) or 128 * sum(regs) > REGISTER_FILE:
                raise ValueError(f"BackwardConfig.registers must be 4 multiples of 8 in [24, 256] summing to at most "
                                 f"{REGISTER_FILE // 128} (the register file over 4 warpgroups), got {regs}")
        elif self.registers is not None:
            raise ValueError(f"BackwardConfig.registers are the specialised build's budgets; the serial build takes "
                             f"none, got {self.registers}")
        if (heads.k_dim, heads.v_dim) != (128, 128):
            raise ValueError(f"the backward kernel is written for K = V = 128 (dS and Ŝ whole in one CTA), "
                             f"got K={heads.k_dim}, V={heads.v_dim}")


# context parallelism's local state gradients (gdnc.runtime.cp_backward): the chain of dS alone
LOCAL_STATE_GRADIENT = BackwardConfig(roles="serial", state_gradient_only=True)

# cp_plan keeps whether each warm-up window is usable as one bit of a 32-bit word
MAX_WINDOW_CHUNKS = 32


def describe(config) -> str:
    """A config's fields as text ("block_v=64, ..."); "none" for a kernel without a config."""
    if config is None:
        return "none"
    return ", ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config))
