"""The tables and the plot benches/replay.py prints: one node sample's, and with --seeds the
summary over several samples, so that no one sample's luck decides a ratio."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

GPU_BUCKETS = (1, 2, 4, 8)


def print_replay(
    key: str, nodes: int, gpus: int, runnable: int, tasks: int, compress: float, rows: dict[str, dict[str, Any]]
) -> None:
    base = rows.get("round_robin", next(iter(rows.values())))
    print(
        f"\n{key}: time replay on {nodes} nodes, {gpus} GPUs; {runnable} of {tasks} GPU tasks "
        f"(the rest fit no node here); arrivals x{compress:.1f}"
    )
    header = f"{'policy':<18} {'mean wait':>10} {'vs rr':>6} {'p99 wait':>10} {'util':>6}"
    header += "".join(f" {f'{b}-GPU mean/p99':>20}" for b in GPU_BUCKETS) + f" {'wall':>6}"
    print(header)
    for name, r in rows.items():
        ratio = r["all_mean_s"] / base["all_mean_s"] if base["all_mean_s"] else float("nan")
        line = f"{name:<18} {r['all_mean_s']:>9.0f}s {ratio:>6.2f} {r['all_p99_s']:>9.0f}s {r['utilisation']:>6.1%}"
        for b in GPU_BUCKETS:
            cell = f"{r[f'{b}gpu_mean_s']:.0f}/{r[f'{b}gpu_p99_s']:.0f}s" if r[f"{b}gpu_n"] else "-"
            line += f" {cell:>20}"
        print(line + f" {r['wall_s']:>5.1f}s")


def print_saturation(variant: str, nodes: int, gpus: int, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{variant}: saturation on {nodes} nodes, {gpus} GPUs (tasks arrive, none leave)")
    print(f"{'policy':<13} {'GPUs requested at first refusal':>32} {'tasks placed':>13}")
    for name, r in rows.items():
        print(f"{name:<13} {r['requested_share']:>32.1%} {r['placed_tasks']:>13}")


def print_shares(variant: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{variant}: saturation with shares (arrivals until they asked for every GPU; refused ones skipped)")
    base = rows.get("best_fit")
    print(
        f"{'policy':<13} {'GPUs unallocated':>17} {'vs best_fit':>12} {'refused':>8} {'GPUs split':>11}"
        f" {'its shares offline':>19} {'their floor':>12}"
    )
    floors = [r["packing_floor_share"] for r in rows.values()]
    for name, r in rows.items():
        left = r["unallocated_share"]
        ratio = left / base["unallocated_share"] if base and base["unallocated_share"] else float("nan")
        line = f"{name:<13} {left:>17.2%} {ratio:>12.2f} {r['refused_tasks']:>8} {r['gpus_split']:>11}"
        floor = r["packing_floor_share"]
        line += f" {r['offline_share']:>19.2%}"
        print(line + (f" {floor:>12.2%}" if floor is not None else f" {'(no scipy)':>12}"))
    if base and None not in floors:
        half = base["unallocated_share"] / 2
        print(
            f"half of best_fit's: {half:.2%}; the rests of the GPUs the placed shares split are, however they are"
            f" packed, at least {min(floors):.2%} of the GPUs (the least of the policies')"
        )


def plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    runs = report["replay"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    policies = list(next(iter(runs.values())))
    width = 0.8 / len(policies)
    for j, policy in enumerate(policies):
        ratios = [rows[policy]["all_mean_s"] / max(rows["round_robin"]["all_mean_s"], 1e-9) for rows in runs.values()]
        axes[0].bar([i + j * width for i in range(len(runs))], ratios, width=width, label=policy)
    axes[0].set_xticks([i + 0.4 for i in range(len(runs))], list(runs), rotation=30)
    axes[0].set_title("mean wait / round_robin's")
    axes[0].legend()
    sat = report["saturation"]
    for j, policy in enumerate([*policies, "(bound)"]):
        shares = [rows[policy]["requested_share"] for rows in sat.values() if policy in rows]
        axes[1].bar([i + j * width for i in range(len(shares))], shares, width=width, label=policy)
    axes[1].set_xticks([i + 0.4 for i in range(len(sat))], list(sat))
    axes[1].set_title("GPUs requested at the first refusal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def ratio(mean_s: float, base_s: float) -> float:
    """A mean wait against round-robin's; undefined (nan) when round-robin's tasks never waited."""
    return mean_s / base_s if base_s else float("nan")


def cell(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def print_samples(samples: dict[int, dict[str, dict[str, dict[str, Any]]]]) -> None:
    """Per node sample and run: round-robin's mean wait and every other policy's against it."""
    seeds = list(samples)
    first = samples[seeds[0]]
    names = [n for n in next(iter(first.values())) if n != "round_robin"]
    print("\nper node sample: mean wait against round_robin's (- where round_robin's tasks never waited)")
    print(f"{'run':<18} {'seed':>4} {'rr mean':>9}" + "".join(f" {n:>17}" for n in names))
    for key in first:
        for seed in seeds:
            rows = samples[seed][key]
            base = rows["round_robin"]["all_mean_s"]
            line = f"{key:<18} {seed:>4} {base:>8.0f}s"
            print(line + "".join(f" {cell(ratio(rows[n]['all_mean_s'], base)):>17}" for n in names))


def summarise(samples: dict[int, dict[str, dict[str, dict[str, Any]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per run and policy over the samples: the summed mean waits against round-robin's summed
    mean waits (a sample where tasks waited long weighs more than one where they barely waited),
    and the worst (highest) ratio of a single sample."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key in next(iter(samples.values())):
        runs = [s[key] for s in samples.values()]
        base = sum(rows["round_robin"]["all_mean_s"] for rows in runs)
        out[key] = {}
        for name in runs[0]:
            ratios = [ratio(rows[name]["all_mean_s"], rows["round_robin"]["all_mean_s"]) for rows in runs]
            defined = [r for r in ratios if not math.isnan(r)]
            out[key][name] = {
                "rr_mean_sum_s": base,
                "summed_ratio": ratio(sum(rows[name]["all_mean_s"] for rows in runs), base),
                "worst_ratio": max(defined) if defined else float("nan"),
            }
    return out


def print_summary(seeds: list[int], summary: dict[str, dict[str, dict[str, float]]]) -> None:
    names = [n for n in next(iter(summary.values())) if n != "round_robin"]
    print(
        f"\nover node samples {seeds[0]}-{seeds[-1]}: summed mean waits against round_robin's / the worst sample's"
        " ratio (- where round_robin's tasks never waited)"
    )
    print(f"{'run':<18} {'rr mean sum':>12}" + "".join(f" {n:>17}" for n in names))
    for key, rows in summary.items():
        line = f"{key:<18} {rows['round_robin']['rr_mean_sum_s']:>11.0f}s"
        cells = [f"{cell(rows[n]['summed_ratio'])}/{cell(rows[n]['worst_ratio'])}" for n in names]
        print(line + "".join(f" {c:>17}" for c in cells))
