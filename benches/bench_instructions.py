"""Instructions and cache misses per placement of the Rust core, counted under callgrind.

Wall time on a shared machine moves by tens of percent from one minute to the next, more than a
single change to the placement path is worth. Callgrind counts what one placement executes
(instructions, and misses in a simulated 32 KiB first-level data cache and 8 MiB last-level
cache, the same sizes whatever the machine's) the same way on every run and every machine, so
two revisions can be compared by ratio. A last-level miss stands for a trip to memory, which on
a machine with a small last-level cache costs as much as hundreds of instructions. The workload is the criterion
bench's steady state (`core_rs/benches/support/fleet.rs`): batches of 1,000 placed out of
100,000 queued tasks, full filtering and composite scoring; only `place()` is counted.

    python benches/bench_instructions.py                  # this tree; JSON and PNG into benches/out/
    python benches/bench_instructions.py --against HEAD~3 # and a revision, with the ratios

A revision is built in a temporary git worktree with this tree's workload files. Needs valgrind
(`make bench` installs it).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, machine, pyplot, save_figure, write_json

WORKLOAD = ["core_rs/examples/place_steady.rs", "core_rs/benches/support/fleet.rs"]
FLEETS = [1_000, 10_000, 100_000]
BATCH = 1_000


def build(tree: Path, target: Path) -> Path:
    """Build the place_steady example of a tree; the binary's path."""
    subprocess.run(
        ["cargo", "build", "--quiet", "--release", "--example", "place_steady", "--target-dir", str(target)],
        cwd=tree,
        check=True,
    )
    return target / "release" / "examples" / "place_steady"


def count(binary: Path, workers: int, rounds: int) -> dict[str, float]:
    """Callgrind's totals inside place_batch, per placement."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--cache-sim=yes",
                # Fixed caches (a 32 KiB L1, an 8 MiB last level), so that misses, like
                # instructions, do not depend on the machine the count runs on.
                "--D1=32768,8,64",
                "--LL=8388608,16,64",
                "--toggle-collect=place_steady::place_batch",
                f"--callgrind-out-file={out}",
                str(binary),
                str(workers),
                str(rounds),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        events: list[str] = []
        totals: list[int] = []
        for line in out.read_text().splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                totals = [int(v) for v in line.split()[1:]]
    got = dict(zip(events, totals, strict=True))
    placements = rounds * BATCH
    return {
        "instructions": got["Ir"] / placements,
        "d1_misses": (got["D1mr"] + got["D1mw"]) / placements,
        "ll_misses": (got["DLmr"] + got["DLmw"]) / placements,
    }


def measure(binary: Path, rounds: int) -> list[dict[str, float]]:
    return [{"workers": w, **count(binary, w, rounds)} for w in FLEETS]


def against(rev: str, rounds: int) -> list[dict[str, float]]:
    """The same counts for a git revision, built with this tree's workload files."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), rev], cwd=ROOT, check=True)
        try:
            for path in WORKLOAD:
                (tree / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / path, tree / path)
            return measure(build(tree, ROOT / "target" / "against"), rounds)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", metavar="REV", help="also count a git revision and print the ratios")
    parser.add_argument("--rounds", type=int, default=20, help="batches of 1,000 counted per fleet")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind (make bench installs it)")
    rows = measure(build(ROOT, ROOT / "target"), args.rounds)
    base = against(args.against, args.rounds) if args.against else None
    print(f"per placement, {args.rounds} batches of {BATCH:,} out of 100,000 queued (callgrind)")
    vs = "   vs " + args.against if base else ""
    print(f"{'workers':>8} {'instructions':>13} {'D1 misses':>10} {'LL misses':>10}{vs}")
    for i, r in enumerate(rows):
        line = f"{r['workers']:>8,} {r['instructions']:>13,.0f} {r['d1_misses']:>10.1f} {r['ll_misses']:>10.2f}"
        if base:
            b = base[i]
            line += (
                f"   instructions {r['instructions'] / b['instructions']:.3f}x, "
                f"D1 misses {r['d1_misses'] / b['d1_misses']:.3f}x"
            )
        print(line)
    data = {"machine": machine(), "rounds": args.rounds, "rows": rows, "against": args.against, "base": base}
    path = write_json("instructions.json", data)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['workers']:,}" for r in rows]
    width = 0.4 if base else 0.6
    offset = width / 2 if base else 0
    ax.bar([i - offset for i in range(len(rows))], [r["instructions"] for r in rows], width, label="this tree")
    if base:
        ax.bar([i + width / 2 for i in range(len(rows))], [b["instructions"] for b in base], width, label=args.against)
        ax.legend()
    ax.set_xticks(range(len(rows)), labels)
    ax.set_xlabel("workers")
    ax.set_ylabel("instructions per placement")
    png = save_figure(fig, "instructions.png")
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
