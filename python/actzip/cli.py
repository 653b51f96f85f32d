"""Command line: ``actzip demo`` (also ``python -m actzip demo``) and ``actzip info``."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .demo import DEFAULT_STEPS, SCHEDULES

    parser = argparse.ArgumentParser(
        prog="actzip",
        description="Error-bounded compression of the activations PyTorch saves for backward.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="train a ResNet on scikit-learn's digits with and without actzip, and compare",
        description=(
            "Trains a ResNet-18-style CNN on scikit-learn's bundled digits (upsampled) twice, "
            "as usual and with actzip, then prints test accuracy, peak saved-activation bytes, "
            "ratio and step time, and writes demo.json, demo.png and history.csv."
        ),
    )
    demo.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS, help=f"training steps per run (default {DEFAULT_STEPS})")
    demo.add_argument("--schedule", choices=SCHEDULES, default="gradual", help="actzip's bound schedule (default gradual)")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    demo.add_argument("--out", default="actzip-demo", help="folder for the outputs (default ./actzip-demo)")
    demo.add_argument("--batch-size", type=_positive_int, default=64, help="images per step (default 64)")
    demo.add_argument("--width", type=_positive_int, default=32, help="channels of the first stage (default 32)")
    demo.add_argument("--bound", type=_positive_float, default=1e-2, help="final relative error bound (default 1e-2)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the weights, split and batches (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    commands.add_parser("info", help="version, threads and backends")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        try:
            run_demo(
                steps=args.steps,
                schedule=args.schedule,
                device=args.device,
                out=args.out,
                batch_size=args.batch_size,
                width=args.width,
                final_bound=args.bound,
                seed=args.seed,
                progress=not args.no_progress,
            )
        except (ValueError, ImportError) as error:
            print(f"actzip demo: {error}", file=sys.stderr)
            return 2
        return 0
    if args.command == "info":
        import torch

        from . import codec

        print(f"actzip {_version()}")
        print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}")
        print(f"codec backends: {', '.join(codec.backends())}; threads: {codec.get_num_threads()}")
        from . import _core

        version = int(_core.FORMAT_VERSION)
        print(f"stream format: writes version {version}, reads versions 1 to {version}")
        return 0
    parser.print_help()
    return 1


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("actzip")
    except Exception:  # not installed (running from the source tree)
        from . import __version__

        return __version__
