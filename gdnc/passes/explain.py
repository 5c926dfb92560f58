"""`gdnc explain`: every chunk program of a recurrence after each pass, with the cost it bought."""
from __future__ import annotations

from gdnc.ir.cost import cost
from gdnc.ir.program import CHUNK_SIZE
from gdnc.passes import STRUCTURE, compile_programs

COLUMNS = (("tc_macs", "TC MACs"), ("cuda_flops", "CUDA FLOPs"), ("sfu", "SFU"), ("cxc_exps", "CxC exps"),
           ("hbm_bytes", "HBM bytes"), ("serial_gemms", "chain"), ("positive_exps", "exp>0"))


def explain(rec, chunk_size=CHUNK_SIZE, K=128, V=128) -> dict:
    """{program: [{stage, note, cost, hbm_roles, program}]} for the forward, state-only and backward."""
    compiled = compile_programs(rec)
    out = {}
    for name, stages in compiled.stages.items():
        rows = []
        for i, (stage, p) in enumerate(stages):
            live = p.live()
            note = p.log[-1] if i else ("reverse-mode autodiff of the forward after " + ", ".join(
                f.__name__ for f in STRUCTURE) if name == "backward" else "built from the canonical form")
            rows.append({"stage": stage, "note": note, "cost": cost(p, chunk_size, K, V).as_dict(),
                         "hbm_roles": sorted({op.role for op in live.ops if op.kind == "hbm"}),
                         "program": str(live)})
        out[name] = rows
    return {"recurrence": rec.name, "equation": rec.equation(), "ir_hash": rec.ir_hash,
            "dims": {"C": chunk_size, "K": K, "V": V}, "programs": out}


def format_explain(report: dict, show_programs: bool = True) -> str:
    lines = [f"{report['recurrence']}: {report['equation']}",
             f"ir hash {report['ir_hash']}; per chunk and value head at C={report['dims']['C']}, "
             f"K={report['dims']['K']}, V={report['dims']['V']}"]
    for name, rows in report["programs"].items():
        lines += ["", f"== {name} program =="]
        header = f"{'stage':<22}" + "".join(f"{title:>20}" for _, title in COLUMNS)
        lines.append(header)
        prev = None
        for row in rows:
            c = row["cost"]
            cells = []
            for key, _ in COLUMNS:
                delta = "" if prev is None or c[key] == prev[key] else \
                    f"{(c[key] - prev[key]) / prev[key] * 100:+.0f}%" if prev[key] else "new"
                cells.append(f"{c[key]:,}" + (f" ({delta})" if delta else ""))
            lines.append(f"{row['stage']:<22}" + "".join(f"{x:>20}" for x in cells))
            lines.append(f"{'':<22}  {row['note']}; through HBM: {', '.join(row['hbm_roles']) or 'nothing'}")
            if show_programs and (prev is None or row["program"] != rows[rows.index(row) - 1]["program"]):
                lines += ["    " + line for line in row["program"].splitlines()]
            prev = c
    return "\n".join(lines)
