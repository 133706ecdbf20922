#!/usr/bin/env python3
"""Run one cmocka test program and apply tests/skips.py to its skips.

cmocka exits 0 when tests were skipped. This wrapper passes the program's output
through, collects its skipped tests ("[  SKIPPED ] name") and their reasons (the
"SKIP: name: reason" lines TN_SKIP() in tn_skip.h prints), and exits with the
program's own failure status, or with skips.verdict(): 77 (skipped) or, under
CI=true, 1 for a skip not on the allow-list. A bare skip() has no reason and is
therefore never allowed in CI.
Usage: run_cmocka.py PROGRAM [ARGS...]
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import skips  # noqa: E402


def main():
    cp = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, errors="replace")
    sys.stdout.write(cp.stdout)
    sys.stdout.flush()
    if cp.returncode != 0:
        return cp.returncode if cp.returncode > 0 else 1
    reasons = dict(re.findall(r"^SKIP: (\w+): (.*)$", cp.stdout, re.M))
    names = []
    for name in re.findall(r"^\[  SKIPPED \] (\w+)\s*$", cp.stdout, re.M):
        if name not in names:
            names.append(name)
    found = [(n, reasons.get(n, "(no reason given: use TN_SKIP(reason))")) for n in names]
    return skips.verdict(found, False, out=sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
