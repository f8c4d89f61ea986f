"""The command line: ``python -m jconv [demo | bench]``."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from jconv.demo import walkthrough

    print(walkthrough(seed=args.seed))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from jconv import bench

    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jconv",
        description="jconv: PyTorch's convolutions as pure JAX functions. "
        "With no subcommand, runs the demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="walk through Conv2d on a 5x5 image (the default)")
    demo.add_argument("--seed", type=int, default=0, help="PRNG seed for the weights")
    demo.set_defaults(run=_demo)
    from jconv.bench import add_arguments

    bench = sub.add_parser("bench", help="time jconv against plain lax and torch on typical layers")
    add_arguments(bench)
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo", *argv])
    return args.run(args)
