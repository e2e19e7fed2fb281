"""Command line: ``python -m shmpool demo`` and ``python -m shmpool info``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the ``demo`` or ``info`` command; return the exit status."""
    # A plain description: the module docstring is reStructuredText, which argparse would
    # print with its markup.
    parser = argparse.ArgumentParser(
        prog="python -m shmpool",
        description="shmpool's command line: time the demo kernel, or print a diagnostic report.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="time a GIL-bound kernel serially and with a SharedPool")
    demo.add_argument("--mb", type=int, default=256, help="array size in MiB (default 256)")
    demo.add_argument("--workers", type=int, default=None, help="worker processes (default: usable CPUs)")
    demo.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], default=None)
    demo.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each kind (default 3, at least 3)"
    )
    commands.add_parser("info", help="versions, CPUs, where shared memory lives and how much is free")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        if args.mb < 1:
            parser.error("--mb must be at least 1")
        if args.repeats < 3:
            parser.error("--repeats must be at least 3 (a median of fewer says little)")
        return run_demo(args.mb, args.workers, args.start_method, args.repeats)
    from ._info import info_lines

    print("\n".join(info_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
