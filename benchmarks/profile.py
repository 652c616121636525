"""Summarise a ``py-spy record --format raw`` file: where the samples went.

    python -m benchmarks.profile FILE [--top N] [--thread SUBSTRING]

Prints the functions with the most samples (inclusive: on the stack; self: at the top).
Stacks whose top frame is a known wait (a queue, a selector, a condition, Tango's server loop)
are left out: py-spy cannot always tell a blocked thread from a busy one.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

#: Top frames that mean "blocked, waiting".
IDLE = (
    "threading.py", "queue.py", "selectors.py", "concurrent/futures/thread.py:81)",
    "tango/server.py:2008)", "launcher.py:208)", "base.py:99)", "anyio/_backends/_asyncio.py",
)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--thread", help="only stacks whose thread name contains this")
    options = parser.parse_args(argv)
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in options.file.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if any(marker in frames[-1] for marker in IDLE):
            continue
        if options.thread and options.thread not in frames[0]:
            continue
        count = int(count_text)
        total += count
        threads[frames[0]] += count
        for frame in set(frames[1:]):
            inclusive[frame] += count
        own[frames[-1]] += count
    print(f"{total} samples")
    print("threads:")
    for name, count in threads.most_common(10):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("inclusive:")
    for name, count in inclusive.most_common(options.top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("self:")
    for name, count in own.most_common(options.top):
        print(f"  {100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
