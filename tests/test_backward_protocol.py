"""The specialised backward's mbarrier protocol, read from its rendered source and played out on the
CPU: a barrier mistake hangs the GPU (or merges two chunks' phases, or lets a role overwrite a tile
another still reads) instead of failing a check, so random orders in which the roles may run are
explored here for a deadlock, an arrival into a phase still open, and (with vector clocks through
the barriers) a shared-memory write unordered with another role's access. A role is one actor: its
threads' order among themselves is the intra-role barriers' business, not modelled."""
import random
import re

import gdnc
from gdnc.emit.config import BackwardConfig, Heads
from gdnc.emit.render import render

WARPGROUP = 128
# who runs each part of the kernel, and how many threads arrive at once
ACTORS = {"chain": 128, "value": 128, "pairs": 128, "loads": 32, "vectors": 32, "dg": 64}
# the phase a wait needs completed, from its parity expression: this step's, or the previous step's
NEEDS = {"step % 2": lambda s: s + 1, "(step + 1) % 2": lambda s: s,
         "(step // 2) % 2": lambda s: s // 2 + 1, "(step // 2 + 1) % 2": lambda s: s // 2}


def source() -> str:
    return render(gdnc.get_variant("gdn"), "gdn_backward", Heads(2, 4), BackwardConfig(roles="specialised"))


def parts(text: str) -> dict[str, str]:
    """Each actor's code: the role branches, and the loader's warps."""
    body = text[text.index("if tx < (CHAIN + 1) * WARPGROUP:"):]
    marks = ["if tx < (CHAIN", "elif tx < (VALUE", "elif tx < (PAIRS", "if warp == 0:", "elif warp == 1:",
             "                else:\n                    # warps 2 and 3"]
    cuts = [body.index(m) for m in marks] + [len(body)]
    return dict(zip(ACTORS, (body[a:b] for a, b in zip(cuts, cuts[1:]))))


def barriers(text: str) -> dict[str, int]:
    """Arrive counts by barrier name (a ring of two: name0, name1)."""
    counts = {}
    for names, values in re.findall(r"^\s+([\w, ]+) = (T\.alloc_barrier\(.*)$", text, re.M):
        calls = re.findall(r"T\.alloc_barrier\((\[[^\]]*\]|[^()]*)\)", values)
        for name, count in zip(names.split(", "), calls):
            value = eval(count, {"WARPGROUP": WARPGROUP})
            if isinstance(value, list):
                counts.update({f"{name}{i}": v for i, v in enumerate(value)})
            else:
                counts[name] = value
    return counts


def operations(code: str) -> list[tuple]:
    """The step loop's barrier operations in order: ("wait", name, needs) or ("arrive", name)."""
    ops = []
    for kind, name, ring, parity in re.findall(r"T\.barrier_(wait|arrive)\((\w+)(\[s\])?(?:, ([^\n]*?))?\)\s*(?:#.*)?$",
                                               code, re.M):
        ops.append(("wait", name, ring, NEEDS[parity]) if kind == "wait" else ("arrive", name, ring))
    return ops


def accesses(code: str, shared: set[str]) -> list[tuple]:
    """The step loop's shared-memory reads and writes and barrier operations, in program order:
    ("read" | "write", buffer, slotted) besides operations()'s tuples. A GEMM reads its shared
    operands, a copy or TMA load writes its shared destination, an element loop writes its target and
    reads what its right-hand side names."""
    ops = []
    for line in code.split("\n"):
        barrier = operations(line)
        if barrier:
            ops += barrier
            continue
        call = re.search(r"T\.(gemm|copy|tma_copy)\((.*)\)", line)
        if call:
            args = [a.strip() for a in call.group(2).split(",")]
            names = [re.match(r"(\w+)", a).group(1) for a in args if re.match(r"(\w+)", a)]
            if call.group(1) == "gemm":
                ops += [("read", n, False) for n in names[:2] if n in shared]
            else:
                # the destination: the second argument (a slice of a global tensor spans commas)
                target = [n for n in names[1:] if n in shared]
                ops += [("read", names[0], False)] if names[0] in shared else []
                ops += [("write", target[-1], False)] if target else []
            continue
        target = re.match(r"\s*(\w+)\[(s, )?[^\]]*\] = (.*)", line)
        rest = target.group(3) if target else line
        for name, slot in re.findall(r"(\w+)\[(s, )?", rest):
            if name in shared:
                ops.append(("read", name, bool(slot)))
        if target and target.group(1) in shared:
            ops.append(("write", target.group(1), bool(target.group(2))))
    return ops


def play(ops: dict[str, list], counts: dict[str, int], steps: int, rng: random.Random) -> list[str]:
    """One random interleaving of every actor's ``steps`` chunks (ops: operations() or accesses() lists),
    with vector clocks carried through the barriers; what went wrong: a deadlock, an arrival into a
    phase still open, or a write and another role's access of the same buffer (slot) with neither
    ordered before the other."""
    clock = {a: dict.fromkeys(ops, 0) for a in ops}
    phase_clock = {}
    done, arrived = dict.fromkeys(counts, 0), dict.fromkeys(counts, 0)
    log, found = {}, []
    at = dict.fromkeys(ops, (0, 0))
    slotted = lambda name, step, slot: name + (str(step % 2) if slot else "")  # noqa: E731  a ring's slot
    while any(s < steps for s, _ in at.values()):
        ready = []
        for actor, (step, i) in at.items():
            op = ops[actor][i] if step < steps else None
            if op is not None and (op[0] != "wait" or done[slotted(op[1], step, op[2])] >= op[3](step)):
                ready.append(actor)
        if not ready:
            return found + [f"deadlock: {({a: ops[a][i][:2] for a, (s, i) in at.items() if s < steps})}"]
        actor = rng.choice(ready)
        step, i = at[actor]
        op = ops[actor][i]
        clock[actor][actor] += 1
        name = slotted(op[1], step, op[2])
        if op[0] == "arrive":
            if done[name] != (step // 2 if op[2] else step):
                return found + [f"{actor} arrives on {name} for step {step} while its phase {done[name]} is open"]
            merged = phase_clock.setdefault((name, done[name]), dict.fromkeys(ops, 0))
            for a in merged:
                merged[a] = max(merged[a], clock[actor][a])
            arrived[name] += ACTORS[actor]
            if arrived[name] == counts[name]:
                arrived[name], done[name] = 0, done[name] + 1
        elif op[0] == "wait":
            for a, t in phase_clock.get((name, op[3](step) - 1), {}).items():
                clock[actor][a] = max(clock[actor][a], t)
        else:
            for other, kind, stamp in log.get(name, []):
                if other != actor and "write" in (kind, op[0]) and stamp > clock[actor][other]:
                    found.append(f"{op[0]} of {name} by {actor} (step {step}) races a {kind} by {other}")
            log.setdefault(name, []).append((actor, op[0], clock[actor][actor]))
        at[actor] = (step, i + 1) if i + 1 < len(ops[actor]) else (step + 1, 0)
    return found


def explore(ops, counts, steps=(1, 2, 3, 5), rounds=200, seed=0) -> list[str]:
    rng = random.Random(seed)
    return sorted({problem for n in steps for _ in range(rounds) for problem in play(ops, counts, n, rng)})


def test_every_barrier_is_declared_and_used_once_a_step():
    text = source()
    counts = barriers(text)
    ops = {actor: operations(code) for actor, code in parts(text).items()}
    used = {op[1] + (str(i) if op[2] else "") for actor in ops for op in ops[actor] for i in (0, 1)}
    assert {name.rstrip("01") for name in used} == {name.rstrip("01") for name in counts}
    # each barrier's arrivals a step add up to its count (the rings': to theirs, each slot once in two steps)
    for name, count in counts.items():
        base = name[:-1] if name[-1] in "01" and name[:-1] + "0" in counts else name
        total = sum(ACTORS[actor] for actor in ops for op in ops[actor] if op[0] == "arrive" and op[1] == base)
        assert total == count, (name, total, count)


def test_no_order_of_the_roles_deadlocks_or_merges_two_chunks():
    text = source()
    counts = barriers(text)
    ops = {actor: operations(code) for actor, code in parts(text).items()}
    assert all(ops.values()) and len(ops["pairs"]) > 30
    assert explore(ops, counts) == []
    # and the exploration finds a missing arrival: without the value role's "dv has read dV'", the
    # pairs role never puts V' in place
    broken = dict(ops, value=[op for op in ops["value"] if op[:2] != ("arrive", "dvp_read")])
    assert any("deadlock" in problem for problem in explore(broken, counts, rounds=5))


def test_no_buffer_is_written_while_another_role_may_still_read_it():
    text = source()
    counts = barriers(text)
    shared = set(re.findall(r"(\w+) = T\.alloc_shared", text))
    ops = {actor: accesses(code, shared) for actor, code in parts(text).items()}
    assert sum(op[0] == "write" for op in ops["pairs"]) > 5 and sum(op[0] == "read" for op in ops["value"]) > 10
    assert explore(ops, counts, steps=(1, 2, 3), rounds=100, seed=1) == []
    # and it finds a missing wait: the pairs role writing T into A_β's buffer before dv has read A_β
    broken = dict(ops, pairs=[op for op in ops["pairs"] if op[:2] != ("wait", "dvp_read")])
    assert any("ab_s" in race for race in explore(broken, counts, steps=(2,), rounds=20, seed=1))
