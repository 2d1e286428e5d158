#!/usr/bin/env python
"""Summarise a py-spy raw (folded) profile: self time by function and by package, inclusive time by function.

    python bench/pyspy_summary.py var/bench/<run>/worker-cooc.pyspy.txt
"""

import collections
import re
import sys


def main(path: str, top: int = 25) -> None:
    own, incl, pkg = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack:
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        m = re.search(r"\((?:.*site-packages/)?([^/)]+)", frames[-1])
        pkg[m.group(1) if m else frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"{total} samples\n\nself time by package:")
    for p, n in pkg.most_common(12):
        print(f"{100 * n / total:5.1f}%  {p}")
    print("\nself time by function:")
    for f, n in own.most_common(top):
        print(f"{100 * n / total:5.1f}%  {f[:140]}")
    print("\ninclusive time by function:")
    for f, n in incl.most_common(top):
        print(f"{100 * n / total:5.1f}%  {f[:140]}")


if __name__ == "__main__":
    main(sys.argv[1])
