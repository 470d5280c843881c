"""The table, the lines under it and the plot benches/bench_peers.py prints: each peer's and each
relay's numbers, gpucp's ratios to its peers and its targets, and each floor as a fraction of
Ray's p50 with what the work on top of it adds."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from common import pyplot, save_figure


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def rate(per_s: float | None) -> str:
    return "-" if per_s is None else f"{per_s:,.0f}"


def ran(results: dict[str, dict[str, Any]], system: str) -> dict[str, Any] | None:
    """The system's result if it was run and did not fail."""
    r = results.get(system)
    return r if r and "error" not in r else None


def floor_lines(
    results: dict[str, dict[str, Any]], ray: dict[str, Any], g: dict[str, Any] | None, unary: bool
) -> list[str]:
    """Each relay that ran as a fraction of Ray's p50, and what the work on top of it adds."""
    lines = []
    # The floor of the path gpucp ran: its unary calls, or its session stream.
    bare = ran(results, "relay" if unary else "relay-s")
    if bare:
        adds = f"; gpucp's own work adds {g['p50_ms'] - bare['p50_ms']:.2f} ms to it" if g else ""
        lines.append(
            f"  the layout's floor, a bare relay ({'unary' if unary else 'session stream'}): "
            f"{ratio(bare['p50_ms'], ray['p50_ms']):.2f}x Ray's p50{adds}"
        )
    durable = ran(results, "relay-sd")
    if durable:
        adds = ""
        if session := ran(results, "relay-s"):
            adds += f"; the commits add {durable['p50_ms'] - session['p50_ms']:.2f} ms to relay-s"
        if g and not unary:
            adds += f"; gpucp's own work adds {g['p50_ms'] - durable['p50_ms']:.2f} ms to it"
        lines.append(
            f"  a durable relay (three SQLite commits per task, nothing else): "
            f"{ratio(durable['p50_ms'], ray['p50_ms']):.2f}x Ray's p50{adds}"
        )
    direct = ran(results, "relay-d")
    if direct:
        lines.append(
            f"  Ray's layout's floor, one round trip to the worker (relay-d): "
            f"{ratio(direct['p50_ms'], ray['p50_ms']):.2f}x Ray's p50; "
            f"Ray's own work adds {ray['p50_ms'] - direct['p50_ms']:.2f} ms to it"
        )
    return lines


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> str:
    lines = [
        f"end to end against peers: {args.workers} workers x {args.slots} GPU slots, no-op tasks claiming 1 GPU, "
        f"loopback, {info['cores']} cores (load avg {info['load_average_1m']} at start)",
        f"closed loop: {args.latency_tasks} sequential tasks after warm-up; burst: {args.burst_tasks} tasks; "
        f"median of {args.rounds} round(s)",
        "",
        f"{'system':<8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'burst accept/s':>15} {'burst done/s':>13}  setup",
    ]
    for system, r in results.items():
        if "error" in r:
            last_line = r["error"].strip().splitlines()[-1] if r["error"].strip() else r["error"]
            lines.append(f"{system:<8} FAILED: {last_line}")
            continue
        lines.append(
            f"{system:<8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['mean_ms']:>8.2f} "
            f"{rate(r['burst_accept_per_s']):>15} {rate(r['burst_done_per_s']):>13}  {r['setup']}"
        )
    g, ray = ran(results, "gpucp"), ran(results, "ray")
    if g or ray:
        lines.append("")
    if g:
        for peer in ("ray", "dask"):
            p = ran(results, peer)
            if p:
                lines.append(
                    f"gpucp / {peer:<4}  p50 {ratio(g['p50_ms'], p['p50_ms']):5.2f}x   "
                    f"p99 {ratio(g['p99_ms'], p['p99_ms']):5.2f}x   "
                    f"burst done/s {ratio(g['burst_done_per_s'], p['burst_done_per_s']):5.2f}x"
                )
        if ray:
            r50, r99 = ratio(g["p50_ms"], ray["p50_ms"]), ratio(g["p99_ms"], ray["p99_ms"])
            burst = ratio(g["burst_done_per_s"], ray["burst_done_per_s"])
            lines.append(f"target p50 <= 0.5 x Ray's:          {'met' if r50 <= 0.5 else 'NOT met'} ({r50:.2f}x)")
            lines.append(f"target p99 <= 0.5 x Ray's:          {'met' if r99 <= 0.5 else 'NOT met'} ({r99:.2f}x)")
            lines.append(f"target burst done/s >= 5 x Ray's:   {'met' if burst >= 5 else 'NOT met'} ({burst:.2f}x)")
    if ray:
        lines += floor_lines(results, ray, g, args.unary)
    if g:
        lines.append(
            f"gpucp burst: {g['burst_done_per_s']:,.0f} tasks/s done; "
            f"accepted durably at {g['burst_accept_per_s']:,.0f}/s"
        )
        if "burst_controlplane_cpu_s" in g:
            lines.append(
                f"gpucp burst CPU: control plane {g['burst_controlplane_cpu_s']:.1f} s "
                f"({g['burst_controlplane_cpu_s'] / args.burst_tasks * 1e6:.0f} us a task), agents "
                f"{g['burst_agents_cpu_s']:.1f} s over {g['burst_wall_s']:.1f} s wall; closed loop: "
                f"control plane {g['loop_controlplane_cpu_us']:.0f} us a task"
            )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> Path:
    plt = pyplot()
    ok = {s: r for s, r in results.items() if "error" not in r}
    names = list(ok)
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 4))
    x = range(len(names))
    lat.bar([i - 0.2 for i in x], [ok[s]["p50_ms"] for s in names], 0.4, label="p50")
    lat.bar([i + 0.2 for i in x], [ok[s]["p99_ms"] for s in names], 0.4, label="p99")
    lat.set_xticks(list(x), names)
    lat.set_ylabel("submit -> result, ms (lower is better)")
    lat.set_title(f"closed loop, {args.latency_tasks} sequential no-op tasks")
    lat.legend()
    thr.bar([i - 0.2 for i in x], [ok[s]["burst_accept_per_s"] or 0 for s in names], 0.4, label="accepted")
    thr.bar([i + 0.2 for i in x], [ok[s]["burst_done_per_s"] or 0 for s in names], 0.4, label="done")
    if "ray" in ok:
        thr.axhline(5 * (ok["ray"]["burst_done_per_s"] or 0), color="grey", linestyle="--", linewidth=1,
                    label="gpucp target: 5 x Ray (done)")
    thr.set_xticks(list(x), names)
    thr.set_ylabel("tasks/s (higher is better)")
    thr.set_title(f"burst of {args.burst_tasks} tasks")
    thr.legend()
    fig.suptitle(f"{args.workers} workers x {args.slots} GPU slots on loopback, {os.cpu_count()} cores")
    return save_figure(fig, "peers.png")
