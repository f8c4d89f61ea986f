"""The command line: ``python -m jconv [demo | shape | bench]``."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from jconv.demo import walkthrough

    print(walkthrough(seed=args.seed))
    return 0


def _shape(args: argparse.Namespace) -> int:
    import json

    from jconv import chain

    try:
        shape = chain.parse_shape(args.input_shape)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        rows, error = chain.trace(shape, args.layers), None
    except chain.ChainError as err:
        rows, error = err.rows, err
    if args.json:
        print(json.dumps(chain.as_json(shape, rows, error), indent=2))
    elif rows:
        print(chain.table(shape, rows))
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.models:
        from jconv import models

        return models.run(args)
    if args.grid:
        from jconv import grid

        return grid.run(args)
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
    shape = sub.add_parser(
        "shape",
        help="output shape, parameters, FLOPs and receptive field through a chain of layers",
        description="Follows an input shape through a chain of layers without computing "
        "anything. Exits 1, naming the layer and the reason, when a layer cannot follow "
        "the one before it.",
        epilog='example: python -m jconv shape 1,3,224,224 "Conv2d(3,64,7,stride=2,padding=3)" '
        '"Conv2d(64,128,3,stride=2,padding=1,groups=4)" '
        '"ConvTranspose2d(128,64,4,stride=2,padding=1)"',
    )
    shape.add_argument("input_shape", help="N,C,*spatial or C,*spatial, e.g. 1,3,224,224")
    shape.add_argument(
        "layers",
        nargs="+",
        metavar="LAYER",
        help='a layer as written in Python, e.g. "Conv2d(3,64,3)"',
    )
    shape.add_argument("--json", action="store_true", help="print JSON instead of a table")
    shape.set_defaults(run=_shape)
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
