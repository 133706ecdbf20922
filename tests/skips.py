"""What a skipped test means, decided in one place for the Python and the cmocka tests.

A skip is not a pass. Every test program lists its skips with their reasons and,
when nothing failed but something was skipped, exits 77: CTest's SKIP_RETURN_CODE
(set on every test in tests/CMakeLists.txt), so `ctest` reports the test as
"Skipped" instead of "Passed". Under CI=true a skip fails the test (exit 1)
unless its reason matches ALLOWED: the few reasons a CI machine may legitimately
not run a test, each with why. Anything else a test needs (root, a tmpfs mount,
a mount namespace, dpkg, nginx, node, valgrind...) CI provides, so its absence
there is a failure, not a skip.
"""
import os
import re
import sys

SKIP_EXIT = 77

# (reason regex, why CI may skip it). Keep this short; a new entry needs a reason a
# reviewer accepts.
ALLOWED = [
    (r"^TN_SKIP_BIG=1\b",
     "the >2 GiB upload was turned off on purpose (scripts/test.sh says so loudly)"),
    (r"^ASan build: ",
     "the ASan+UBSan pass cannot run valgrind or RLIMIT_AS-limited workers; the plain "
     "pass of the same suite runs those tests"),
    (r"^no IPv6 loopback\b",
     "the container or host has IPv6 disabled; nothing in our code can provide it"),
]


def in_ci():
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def allowed(reason):
    """The ALLOWED entry's why for this reason, or None."""
    for pattern, why in ALLOWED:
        if re.search(pattern, reason or ""):
            return why
    return None


def verdict(skips, failed, out=sys.stderr):
    """Print the skips loudly and return the exit status: 1 when a test failed (or, under
    CI=true, when a skip is not on the allow-list), 77 when something was skipped, else 0.
    skips: [(test name, reason)]."""
    if not skips:
        return 1 if failed else 0
    ci = in_ci()
    refused = []
    print("=" * 70, file=out)
    print("SKIPPED %d test(s): this program does NOT count as passed" % len(skips), file=out)
    for name, reason in skips:
        why = allowed(reason)
        if why is None and ci:
            refused.append(name)
        print("  SKIPPED %s: %s%s" % (name, reason,
                                      "  [allowed in CI: %s]" % why if why else
                                      "  [NOT allowed under CI=true]" if ci else ""),
              file=out)
    if refused:
        print("CI=true: %d skip(s) not on the allow-list in tests/skips.py: failing"
              % len(refused), file=out)
    print("=" * 70, file=out, flush=True)
    if failed or refused:
        return 1
    return SKIP_EXIT
