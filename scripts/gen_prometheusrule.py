"""Write deploy/kubernetes/base/prometheusrule.yaml from deploy/prometheus/gpucp-rules.yml.

The alert rules live in one file, tested by promtool; the Prometheus Operator takes the same
groups inside a PrometheusRule. Run after editing the rules; --check (tests/test_deploy.py) fails
when the PrometheusRule is not what the rules make:
    python scripts/gen_prometheusrule.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "gpucp-rules.yml"
TARGET = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/gpucp-rules.yml by scripts/gen_prometheusrule.py: edit the
# rules there, then run the script.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: gpucp
spec:
"""


def render(rules: str) -> str:
    """The PrometheusRule: the rules file's groups, comments and all, indented under spec."""
    lines = rules.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "".join(f"  {line}\n" if line.strip() else "\n" for line in lines[start:])
    return HEADER + body


def main(argv: list[str]) -> int:
    wanted = render(RULES.read_text())
    target = TARGET.relative_to(ROOT)
    if argv == ["--check"]:
        if TARGET.read_text() == wanted:
            return 0
        print(f"{target} is out of date: run python scripts/gen_prometheusrule.py and commit it", file=sys.stderr)
        return 1
    if argv:
        print("usage: python scripts/gen_prometheusrule.py [--check]", file=sys.stderr)
        return 2
    TARGET.write_text(wanted)
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
