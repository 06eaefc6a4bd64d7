"""`make audit`: pip-audit over the locked dependencies (constraints.txt), judged strictly.

pip-audit prints "No known vulnerabilities found" and exits 0 even when it could not audit
a package at all (the advisory service does not know that version, or a mirror serves no
per-version data): it lists those as skipped. An audit that did not look is not a pass, so
this wrapper reads pip-audit's JSON report and exits

- 0: every pinned package was audited and none has a known vulnerability;
- 1: findings (package, version, advisory and the versions that fix it are printed);
- 2: no verdict: pip-audit could not run, the advisory service could not be reached (or
  took longer than --deadline), or some pinned packages could not be audited.

It uses the standard library only, so it runs with the interpreter of pip-audit's own
virtualenv (the Makefile keeps pip-audit out of the project's virtualenv, so that `make
test` never depends on it or on an advisory database).

    python soak/audit.py [-r constraints.txt] [--service pypi|osv] [--pip-audit PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FINDINGS, NO_VERDICT = 1, 2


@dataclass(frozen=True)
class Audit:
    audited: list[tuple[str, str]]  # (name, version) with no known vulnerability
    findings: list[tuple[str, str, str, str]]  # (name, version, advisory ids, fixed in)
    skipped: list[tuple[str, str]]  # (name, why)


def pinned(requirements: str) -> list[str]:
    """The `name==version` lines of a requirements/constraints file (comments dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in requirements.splitlines())
    return [line for line in lines if "==" in line]


def read_report(report: dict[str, Any]) -> Audit:
    """pip-audit's `-f json` report, sorted into audited, findings and skipped."""
    audited, findings, skipped = [], [], []
    for dep in report.get("dependencies") or []:
        name = str(dep.get("name", "?"))
        if dep.get("skip_reason"):
            skipped.append((name, str(dep["skip_reason"])))
            continue
        version = str(dep.get("version", "?"))
        vulns = dep.get("vulns") or []
        if not vulns:
            audited.append((name, version))
        for vuln in vulns:
            ids = " / ".join([str(vuln.get("id"))] + [str(a) for a in vuln.get("aliases") or []])
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fix yet"
            findings.append((name, version, ids, fixed))
    return Audit(audited, findings, skipped)


def verdict(audit: Audit, pins: int) -> tuple[int, list[str]]:
    """The exit code and the lines that explain it."""
    lines = []
    checked = len(audit.audited) + len({name for name, *_ in audit.findings})
    lines.append(f"audited {checked} of {pins} pinned packages; {len(audit.findings)} known "
                 f"vulnerabilities; {len(audit.skipped)} not audited")  # fmt: skip
    for name, version, ids, fixed in audit.findings:
        lines.append(f"  VULNERABLE {name}=={version}: {ids} (fixed in: {fixed})")
    if audit.skipped:
        reasons = Counter(why.split(":")[0] for _, why in audit.skipped)
        for reason, count in reasons.most_common():
            lines.append(f"  not audited ({count}): {reason}")
        names = ", ".join(name for name, _ in audit.skipped[:12])
        more = f" and {len(audit.skipped) - 12} more" if len(audit.skipped) > 12 else ""
        lines.append(f"  e.g. {names}{more}")
    if audit.findings:
        return FINDINGS, lines
    if audit.skipped or checked < pins:
        lines.append("no verdict: the advisory service did not answer for every pinned "
                     "package (pip-audit alone would report 'No known vulnerabilities "
                     "found'); run `make audit` where the service is reachable")  # fmt: skip
        return NO_VERDICT, lines
    return 0, lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-r", "--requirements", type=Path, default=ROOT / "constraints.txt")
    parser.add_argument(
        "--service",
        default="pypi",
        choices=["pypi", "osv"],
        help="the advisory service pip-audit asks (default pypi)",
    )
    parser.add_argument("--pip-audit", default=shutil.which("pip-audit") or "pip-audit")
    parser.add_argument(
        "--deadline",
        type=float,
        default=600.0,
        help="seconds the whole audit may take (default 600)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    pins = pinned(args.requirements.read_text())
    with tempfile.TemporaryDirectory(prefix="meshgate-audit-") as tmp:
        out = Path(tmp) / "report.json"
        command = [args.pip_audit, "-r", str(args.requirements), "--no-deps", "--disable-pip",
                   "--vulnerability-service", args.service, "--progress-spinner", "off",
                   "--timeout", "20", "--format", "json", "--output", str(out)]  # fmt: skip
        print("$ " + " ".join(command), flush=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=args.deadline, check=False)  # fmt: skip
        except FileNotFoundError:
            print(f"make audit: {args.pip_audit} not found (pip install pip-audit)")
            return NO_VERDICT
        except subprocess.TimeoutExpired:
            print(f"make audit: no verdict: pip-audit took longer than {args.deadline:g} s "
                  f"(is the {args.service} advisory service reachable?)")  # fmt: skip
            return NO_VERDICT
        if done.returncode not in (0, 1) or not out.exists():
            tail = "\n".join(done.stderr.strip().splitlines()[-4:])
            print(f"make audit: no verdict: pip-audit failed (exit {done.returncode}); the "
                  f"{args.service} advisory service may be unreachable:\n{tail}")  # fmt: skip
            return NO_VERDICT
        audit = read_report(json.loads(out.read_text()))
    code, lines = verdict(audit, len(pins))
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
