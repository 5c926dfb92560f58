"""Results of a benchmark run: results.json, results.md (the README's table) and latency.png.

Works on the JSON dictionary alone (no torch, no GPU), so a results folder can be re-rendered
anywhere:  python -m gdnc.bench.report benchmarks/results/<date>-<gpu>/
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# Two bf16 implementations of the same recurrence differ by a few 1e-3 (anchors.md: each sits at
# ~3e-3 from float64); an order of magnitude more means one of them computes something else.
ERROR_LIMIT = 1e-2

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "results.json", "results.md", "latency.png"


def measured_providers(results: dict) -> list[str]:
    """Names of the providers that ran, in the run's order."""
    return [p["name"] for p in results["providers"] if p["available"]]


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in values) / len(values))


def _ms(shape: dict, name: str) -> float | None:
    entry = shape["results"].get(name)
    return entry["ms"] if entry and entry.get("ms") is not None else None


def ratio_stats(results: dict, name: str, over: str) -> dict | None:
    """Geomean, min and max of time(name) / time(over) on the shapes where both ran."""
    ratios = [_ms(s, name) / _ms(s, over) for s in results["shapes"]
              if _ms(s, name) is not None and _ms(s, over)]
    if not ratios:
        return None
    return {"geomean": _geomean(ratios), "min": min(ratios), "max": max(ratios), "shapes": len(ratios)}


def summary(results: dict) -> dict:
    """Per measured provider: geometric means of time / baseline and of time / floor."""
    out = {}
    for name in measured_providers(results):
        over_floor = [_ms(s, name) / s["roofline"]["floor_ms"] for s in results["shapes"]
                      if _ms(s, name) is not None]
        out[name] = {
            "shapes": len(over_floor),
            "over_baseline": ratio_stats(results, name, results["baseline"]),
            "over_floor": _geomean(over_floor) if over_floor else None,
        }
    return out


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}"


def _fmt_err(err: float | None) -> str:
    if err is None:
        return "–"
    text = f"{err:.1e}"
    return text if err <= ERROR_LIMIT else f"**{text} (!)**"  # NaN fails this test too


def _heads(shape: dict) -> str:
    return f"{shape['h_qk']}/{shape['h_v']}"


def _tokens(shape: dict) -> str:
    return shape["mix"].replace("x", "×")


def _latency_table(results: dict) -> list[str]:
    base = results["baseline"]
    names = measured_providers(results)
    others = [n for n in names if n != base]
    header = (["h_qk/h_v", "tokens", "floor ms"] + [f"{n} ms" for n in names]
              + [f"{n} / {base}" for n in others] + [f"{base} / floor", f"{base} TFLOP/s",
                                                     f"{base} GB/s"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for shape in results["shapes"]:
        roof = shape["roofline"]
        cells = [_heads(shape), _tokens(shape), f"{_fmt_ms(roof['floor_ms'])} ({roof['bound'][0]})"]
        for name in names:
            entry = shape["results"].get(name, {})
            if entry.get("ms") is None:
                cells.append("error" if entry.get("error") else "–")
            else:
                cells.append(f"{_fmt_ms(entry['ms'])} ±{entry['spread'] * 100:.0f}%")
        base_ms = _ms(shape, base)
        for name in others:
            ms = _ms(shape, name)
            cells.append(f"{ms / base_ms:.2f}" if ms is not None and base_ms else "–")
        if base_ms:
            entry = shape["results"][base]
            cells += [f"{base_ms / roof['floor_ms']:.1f}", f"{entry['tflops']:.0f}",
                      f"{entry['gbps']:.0f}"]
        else:
            cells += ["–", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _summary_table(results: dict) -> list[str]:
    base = results["baseline"]
    lines = [f"| provider | shapes | time / {base}, geomean (min–max) | time / floor, geomean |",
             "|---|---|---|---|"]
    for name, s in summary(results).items():
        ob = s["over_baseline"]
        ratio = f"{ob['geomean']:.2f} ({ob['min']:.2f}–{ob['max']:.2f})" if ob else "–"
        floor = f"{s['over_floor']:.2f}" if s["over_floor"] else "–"
        lines.append(f"| {name} | {s['shapes']} | {ratio} | {floor} |")
    return lines


def _published_section(results: dict) -> list[str]:
    lines = []
    for provider in results["providers"]:
        pub = provider.get("published")
        if not pub:
            continue
        lines += [f"## {provider['name']}: published numbers, not measured here", "",
                  (f"{provider['name']} {provider['note']}. Source: {pub['source']}; "
                   f"{pub['forward_cases']} forward cases, {provider['name']} faster than "
                   f"FlashQLA in {pub['flashinfer_faster_cases']}."), "",
                  "| time / FlashQLA, geomean (min–max) | published | this run |", "|---|---|---|"]
        for peer, r in pub["time_ratio_over_flashqla"].items():
            ours = ratio_stats(results, peer, "FlashQLA")
            ours = (f"{ours['geomean']:.2f} ({ours['min']:.2f}–{ours['max']:.2f}), "
                    f"{ours['shapes']} shapes" if ours else "not run")
            lines.append(f"| {peer} | {r['geomean']:.2f} ({r['min']:.2f}–{r['max']:.2f}) | {ours} |")
        lines += ["", "| shape | published ms |", "|---|---|"]
        for shape_name, times in pub["examples_ms"].items():
            lines.append(f"| {shape_name} | "
                         + ", ".join(f"{peer} {ms:.3f}" for peer, ms in times.items()) + " |")
        lines.append("")
    return lines


def _first_call_section(results: dict) -> list[str]:
    """First call per provider and head configuration in the timing process: compilation and
    autotuning included without a warm-up, loading from the caches after one."""
    how = ("after the warm-up: kernels from the caches, unless a warm-up unit failed"
           if results.get("warmup") else "compilation and autotuning included")
    first, total = {}, {}
    for shape in results["shapes"]:
        for name, entry in shape["results"].items():
            if entry.get("first_call_s") is None:
                continue
            key = (name, _heads(shape))
            first.setdefault(key, (shape["mix"], entry["first_call_s"]))
            total[key] = total.get(key, 0.0) + entry["first_call_s"]
    lines = [f"## First calls in the timing process ({how})", "",
             "| provider | h_qk/h_v | first call, first shape (s) | first calls, all its shapes (s) |",
             "|---|---|---|---|"]
    for (name, heads), (mix, seconds) in first.items():
        lines.append(f"| {name} | {heads} | {seconds:.1f} ({mix.replace('x', '×')}) | "
                     f"{total[(name, heads)]:.1f} |")
    return lines + [""]


def _cold_start_section(results: dict) -> list[str]:
    """Time to the first result for a new head configuration, each provider alone and cold."""
    cold = results.get("cold_start")
    if not cold:
        return []
    lines = ["## Cold start: time to the first result for a new head configuration", "",
             (f"{_heads(cold)}, {_tokens(cold)} tokens. Each provider in a fresh process with empty "
              f"TileLang, Triton, gdnc and CUDA caches; seconds from the start of the process, so "
              f"imports and compilation count; beside {cold['beside_warm_workers']} warm-up "
              f"workers (they share the CPU)."), "",
             "| provider | imports (s) | first call (s) | first result (s) |", "|---|---|---|---|"]
    for name, result in cold["results"].items():
        if "error" in result:
            lines.append(f"| {name} | error: {result['error']} | – | – |")
        else:
            lines.append(f"| {name} | {result['import_s']:.1f} | {result['first_call_s']:.1f} | "
                         f"{result['total_s']:.1f} |")
    return lines + [""]


def _warmup_section(results: dict) -> list[str]:
    """What the warm-up workers compiled, per provider and head configuration."""
    warmup = results.get("warmup")
    if not warmup:
        return []
    lines = ["## Warm-up (compilation before timing)", "",
             (f"{warmup['workers']} worker processes, {warmup['wall_s']:.0f} s; each unit called one "
              f"provider once per token mix of one head configuration, compiling into the on-disk "
              f"caches the timing process read (worker main: the timing process itself). Triton "
              f"autotuning in the workers: {'; '.join(warmup['autotune']) or 'none'}."),
             "", "| provider | h_qk/h_v | token mixes | seconds | worker | errors |",
             "|---|---|---|---|---|---|"]
    for unit in warmup["units"]:
        errors = f"{len(unit['errors'])}, first: {unit['errors'][0]}" if unit["errors"] else "–"
        lines.append(f"| {unit['provider']} | {_heads(unit)} | {unit['mixes']} | "
                     f"{unit['seconds']:.1f} | {unit['worker']} | {errors} |")
    if warmup["failures"]:
        lines += ["", *(f"- {failure}" for failure in warmup["failures"])]
    return lines + [""]


def _correctness_table(results: dict) -> list[str]:
    lines = ["| shape | compared | o | final_state |", "|---|---|---|---|"]
    skipped = set()
    for shape in results["shapes"]:
        for pair in shape.get("cross_check", []):
            lines.append(f"| {shape['name']} | {pair['a']} vs {pair['b']} | {_fmt_err(pair['o'])} | "
                         f"{_fmt_err(pair['final_state'])} |")
        ref = shape.get("float64")
        if ref and ref["status"] == "ok":
            for name, err in ref["errors"].items():
                lines.append(f"| {shape['name']} | {name} vs float64 | {_fmt_err(err['o'])} | "
                             f"{_fmt_err(err['final_state'])} |")
        elif ref:
            skipped.add(ref["status"])
    if skipped:
        lines += ["", *(f"float64 check {status}." for status in sorted(skipped))]
    return lines


def markdown(results: dict) -> str:
    """The whole report; the first table is the one the README shows."""
    dev, ceil = results["device"], results["ceilings"]
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    methods = {entry["method"] for shape in results["shapes"]
               for entry in shape["results"].values() if "method" in entry}
    how = ("medians of CUDA-graph replays" if methods <= {"cuda_graph"} else
           "medians of CUDA-graph replays, or of event-timed launches where capture failed "
           "(see the notes at the end)")
    seeds = results["settings"].get("merged_seeds")
    inputs = (f"Merged from {len(seeds)} runs (seeds {', '.join(map(str, seeds))}; shape filters "
              f"{results['settings']['merged_filters']}), a later run's shape replacing an earlier's; "
              f"within a shape every provider ran in one process on the same fresh random inputs"
              if seeds else
              f"Every provider ran in one process on the same fresh random inputs (seed "
              f"{results['settings']['seed']})")
    lines = [
        f"# GDN forward: {dev['name']}, {results['date']}", "",
        (f"{_selection(results['settings'])}, "
        f"{len(results['shapes'])} shapes. {inputs}; times are {how}, ± is the spread "
        f"between two repeats. Floor = max(FLOPs / GEMM rate, bytes / "
        f"copy bandwidth) with {'the first run' if seeds else 'this run'}'s ceilings: bf16 GEMM "
        f"{ceil['gemm']['flops_per_s'] / 1e12:.0f} TFLOP/s, device copy "
        f"{ceil['copy']['bytes_per_s'] / 1e12:.2f} TB/s (read + write); (c)/(m): compute or "
        f"memory bound. Baseline for ratios: {results['baseline']}."), "",
        f"Versions: {versions}.", "",
        *_latency_table(results), "",
        "## Geometric means", "", *_summary_table(results), "",
        *_published_section(results),
        *_cold_start_section(results),
        *_first_call_section(results),
        *_warmup_section(results),
        f"## Correctness (relative L2 error; (!) above {ERROR_LIMIT:g})", "",
        *_correctness_table(results), "",
        "## Providers", "",
    ]
    for p in results["providers"]:
        version = f" {p['version']}" if p.get("version") else ""
        lines.append(f"- {p['name']}{version}: {p['note']}")
    problems = [f"- {shape['name']}, {name}: {entry.get('error') or entry.get('note')}"
                for shape in results["shapes"] for name, entry in shape["results"].items()
                if entry.get("error") or entry.get("note")]
    problems += [f"- {skipped['name']}: not run, {skipped['reason']}"
                 for skipped in results.get("not_run_shapes", [])]
    if problems:
        lines += ["", "## Errors and timing notes", "", *problems]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Latency per shape for every measured provider, log scale, with the floor."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, works headless

    shapes = results["shapes"]
    labels = [s["name"] for s in shapes]
    xs = range(len(shapes))
    fig = Figure(figsize=(max(8.0, 0.4 * len(shapes) + 3), 5.5), layout="constrained")
    ax = fig.add_subplot()
    # Shapes are categories, not a series: the floor is a bar per shape, providers sit side by side.
    ax.plot(xs, [s["roofline"]["floor_ms"] for s in shapes], "k_", ms=14, mew=1.5, ls="",
            label="floor")
    names = measured_providers(results)
    for i, (name, marker) in enumerate(zip(names, "osD^v<>p*")):
        offset = 0.15 * (i - (len(names) - 1) / 2)
        points = [(x + offset, _ms(s, name)) for x, s in zip(xs, shapes) if _ms(s, name) is not None]
        if points:
            ax.plot(*zip(*points), marker=marker, ls="", label=name)
    ax.set_yscale("log")
    ax.set_xticks(list(xs), labels, rotation=90, fontsize=8)
    ax.set_ylabel("forward latency, ms (log)")
    ax.set_title(f"GDN forward, {results['device']['name']}, {results['date']}")
    ax.grid(True, which="both", axis="y", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)


def write_json(results: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / JSON_NAME
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def write_all(results: dict, out_dir: Path) -> list[Path]:
    """results.json (with the summary), results.md and latency.png."""
    results["summary"] = summary(results)
    written = [write_json(results, out_dir), out_dir / MARKDOWN_NAME, out_dir / PLOT_NAME]
    written[1].write_text(markdown(results))
    plot(results, written[2])
    return written


def merge(runs: list[dict], dropped: dict[str, str]) -> dict:
    """One report from runs of the same providers on one device, in order: a later run's shape
    replaces an earlier run's; the shapes named in ``dropped`` (name -> why) are listed as not run.
    The first run's ceilings head the report (each shape keeps the floor it was measured with)."""
    devices = {run["device"]["name"] for run in runs}
    if len(devices) != 1:
        raise ValueError(f"merge: the runs are from different devices: {sorted(devices)}")
    shapes = {}
    for run in runs:
        shapes.update((shape["name"], shape) for shape in run["shapes"])
    not_run = {entry["name"]: entry["reason"] for run in runs for entry in run.get("not_run_shapes", [])}
    not_run.update(dropped)
    merged = dict(runs[-1], ceilings=runs[0]["ceilings"], cold_start=None,
                  shapes=[shape for name, shape in shapes.items() if name not in dropped],
                  not_run_shapes=[{"name": name, "reason": why} for name, why in not_run.items()
                                  if name not in shapes or name in dropped],
                  settings=dict(runs[-1]["settings"], merged_seeds=[run["settings"]["seed"] for run in runs],
                                merged_filters=[run["settings"].get("shapes_filter") for run in runs]))
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gdnc.bench.report",
                                     description="Re-render results.md and latency.png from "
                                                 "a results folder's results.json, or merge runs into it.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="RUN",
                        help="results folders, earliest first: later shapes replace earlier ones")
    parser.add_argument("--drop", nargs="*", default=[], metavar="NAME=WHY",
                        help="with --merge: shapes to list as not run, and why")
    args = parser.parse_args(argv)
    if args.merge:
        runs = []
        for folder in args.merge:
            if not (folder / JSON_NAME).is_file():
                raise SystemExit(f"{folder / JSON_NAME} does not exist")
            runs.append(json.loads((folder / JSON_NAME).read_text()))
        results = merge(runs, dict(item.split("=", 1) for item in args.drop))
    else:
        source = args.folder / JSON_NAME
        if not source.is_file():
            raise SystemExit(f"{source} does not exist")
        results = json.loads(source.read_text())
    for path in write_all(results, args.folder):
        print(path)
    return 0


def _selection(settings: dict) -> str:
    """Which shapes the run was asked for: the quick subset, a filter, or the full table."""
    selection = "Quick subset" if settings.get("quick") else "Full table"
    if settings.get("shapes_filter") and not settings.get("merged_seeds"):
        selection += f" filtered by {settings['shapes_filter']!r}"
    return selection


if __name__ == "__main__":
    raise SystemExit(main())

