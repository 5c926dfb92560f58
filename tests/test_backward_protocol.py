"""The specialised backward's mbarrier protocol, read from its rendered source and played out on the
CPU: a barrier mistake hangs the GPU (or merges two chunks' phases) instead of failing a check, so
every order in which the roles may run is explored here for a deadlock or an arrival into a phase
that has not yet completed its previous one."""
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


def play(ops: dict[str, list], counts: dict[str, int], steps: int, rng: random.Random) -> str | None:
    """One random interleaving of every actor's ``steps`` chunks; a description of what went wrong, or None."""
    done = dict.fromkeys(counts, 0)
    arrived = dict.fromkeys(counts, 0)
    at = dict.fromkeys(ops, (0, 0))
    while True:
        ready = []
        for actor, (step, i) in at.items():
            if step == steps:
                continue
            op = ops[actor][i]
            name = op[1] + (str(step % 2) if op[2] else "")
            if op[0] == "arrive" or done[name] >= op[3](step):
                ready.append(actor)
        if not ready:
            stuck = {a: ops[a][i][:2] for a, (s, i) in at.items() if s < steps}
            return f"deadlock: {stuck}" if stuck else None
        actor = rng.choice(ready)
        step, i = at[actor]
        op = ops[actor][i]
        name = op[1] + (str(step % 2) if op[2] else "")
        if op[0] == "arrive":
            phase = step // 2 if op[2] else step
            if done[name] != phase:
                return f"{actor} arrives on {name} for step {step} while its phase {done[name]} is open"
            arrived[name] += ACTORS[actor]
            if arrived[name] == counts[name]:
                arrived[name], done[name] = 0, done[name] + 1
        at[actor] = (step, i + 1) if i + 1 < len(ops[actor]) else (step + 1, 0)


def explore(ops, counts, rounds=200) -> list[str]:
    rng = random.Random(0)
    return [problem for steps in (1, 2, 3, 5) for _ in range(rounds) if (problem := play(ops, counts, steps, rng))]


def test_every_barrier_is_declared_and_used_once_a_step():
    text = source()
    counts = barriers(text)
    ops = {actor: operations(code) for actor, code in parts(text).items()}
    used = {op[1] + (str(i) if op[2] else "") for actor in ops for op in ops[actor] for i in (0, 1)}
    assert {name.rstrip("01") for name in used} == {name.rstrip("01") for name in counts}
    # each barrier's arrivals a step add up to its count (the rings': to theirs, each slot once in two steps)
    for name, count in counts.items():
        base, ring = (name[:-1], True) if name[-1] in "01" and name[:-1] + "0" in counts else (name, False)
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
