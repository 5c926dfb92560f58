"""gdnc's main job on a recurrence: derive its chunked form and check it against the references."""
from __future__ import annotations

import dataclasses
import time

import torch

from gdnc.ir.classify import classify
from gdnc.ir.recurrence import Recurrence
from gdnc.reference import chunked, recurrent
from gdnc.reference.compare import errors_by_name, random_case

TOLERANCE = 1e-10  # float64 chunked vs token-by-token: both exact up to rounding


@dataclasses.dataclass
class CheckResult:
    name: str
    axes: dict
    errors: dict[str, float]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(e <= TOLERANCE for e in self.errors.values())

    def summary(self) -> str:
        worst = max(self.errors, key=self.errors.get)
        status = "PASS" if self.passed else "FAIL"
        errs = " ".join(f"{n}={e:.1e}" for n, e in self.errors.items())
        return (f"{status} {self.name} [{', '.join(f'{k}: {v}' for k, v in self.axes.items())}] "
                f"chunked vs recurrent float64, worst {worst}={self.errors[worst]:.1e} "
                f"(tolerance {TOLERANCE:.0e}; {self.seconds:.1f}s)\n     {errs}")


def check_references(rec: Recurrence, *, T: int = 1000, chunk_size: int = 64, seed: int | None = None) -> CheckResult:
    """Chunked form vs token-by-token reference in float64 on fresh random inputs (GVA, varlen with a
    length-1 sequence, h0): o, final_state and every gradient."""
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int(time.time_ns() % 2**63))
    seqlens = [1, T // 3, T - 1 - T // 3] if T >= 3 else [T]
    case = random_case(rec, T=T, seqlens=seqlens, generator=gen)
    start = time.perf_counter()
    errors = errors_by_name(rec, case, chunked, recurrent, chunk_size=chunk_size)
    return CheckResult(rec.name, classify(rec).axes(), errors, time.perf_counter() - start)
