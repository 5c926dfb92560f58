"""Named rewrites of chunk programs, and the pipeline that runs them (read it top to bottom)."""
from __future__ import annotations

import dataclasses

from gdnc.ir.autodiff import build_backward
from gdnc.ir.build import build_forward, build_state_only
from gdnc.ir.canonical import classify
from gdnc.ir.program import Program
from gdnc.ir.recurrence import Recurrence
from gdnc.passes.cleanup import cse, dce
from gdnc.passes.eliminate_wu import eliminate_wu
from gdnc.passes.fuse_forward import fuse_forward
from gdnc.passes.gate_after_product import gate_after_product
from gdnc.passes.hoist_gates import hoist_gates
from gdnc.passes.merge_gate_gradients import merge_gate_gradients
from gdnc.passes.reassociate_chain import reassociate_chain
from gdnc.passes.share_decay_mask import share_decay_mask
from gdnc.passes.split_state_xy import split_state_xy
from gdnc.passes.use_exp2 import use_exp2

# Rewrites of the forward structure; the backward is differentiated after them.
STRUCTURE = (hoist_gates, eliminate_wu, fuse_forward)
FORWARD = STRUCTURE + (reassociate_chain, share_decay_mask, gate_after_product, use_exp2, cse, dce)
STATE = STRUCTURE + (split_state_xy, use_exp2, cse, dce)
BACKWARD = (share_decay_mask, merge_gate_gradients, use_exp2, cse, dce)


@dataclasses.dataclass
class Compiled:
    """The three rewritten programs of a recurrence and every stage they went through."""

    forward: Program
    state: Program
    backward: Program
    stages: dict[str, list[tuple[str, Program]]]  # program -> [(stage, program after it)]


def run_passes(p: Program, passes, stages: list) -> Program:
    for rewrite in passes:
        p = rewrite(p)
        p.verify()
        stages.append((rewrite.__name__, p))
    return p


def compile_programs(rec: Recurrence) -> Compiled:
    """trace → classify → build (forward, state-only) → rewrite → differentiate → rewrite."""
    form = classify(rec)
    stages: dict[str, list] = {"forward": [], "state": [], "backward": []}
    base = dce(build_forward(form))
    stages["forward"].append(("baseline", base))
    forward = run_passes(base, FORWARD, stages["forward"])

    state0 = build_state_only(form)
    stages["state"].append(("baseline", state0))
    state = run_passes(state0, STATE, stages["state"])

    structured = base
    for rewrite in STRUCTURE:
        structured = rewrite(structured)
    backward0 = dce(build_backward(dce(structured)))
    stages["backward"].append(("autodiff", backward0))
    backward = run_passes(backward0, BACKWARD, stages["backward"])
    return Compiled(forward, state, backward, stages)
