"""The ``transferkit`` command line: one module per command, registered here.

Each command module has ``register(commands)`` (its flags, help and examples)
and ``run(args)`` (a thin adapter: build a recipe, call the library, print).
TensorFlow is imported only inside the commands that train or predict, so
``transferkit --help`` and ``transferkit backbones`` answer fast. Known
errors print one paragraph and exit 2; ``--debug`` (or ``TRANSFERKIT_DEBUG=1``)
shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
from typing import Sequence

from transferkit.cli import backbones, evaluate, export, finetune, lr_find, plan, predict, prune, report, tune
from transferkit.cli.common import quiet_native_logs
from transferkit.errors import TransferkitError

__all__ = ["main", "COMMANDS"]

#: Every command, in ``--help`` order: name → its module (``register``, ``run``).
COMMANDS = {"backbones": backbones, "finetune": finetune, "lr-find": lr_find, "plan": plan, "prune": prune,
            "tune": tune, "predict": predict, "evaluate": evaluate, "report": report, "export": export}


def build_parser() -> argparse.ArgumentParser:
    """The root parser with every command of :data:`COMMANDS` registered."""
    from transferkit import __version__

    parser = argparse.ArgumentParser(
        prog="transferkit",
        description="Explicit, measured, reproducible transfer learning for Keras 3.",
    )
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status.

    Args:
        argv: Arguments without the program name. Defaults to ``sys.argv[1:]``.

    Returns:
        0 on success, 2 on a known error (printed as one paragraph).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("TRANSFERKIT_DEBUG") == "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # this process's C++ log noise only
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # TensorFlow's INFO lines stay quiet
    logging.getLogger("transferkit").setLevel(logging.INFO)
    try:
        with contextlib.nullcontext() if debug else quiet_native_logs():
            return COMMANDS[args.command].run(args)
    except BrokenPipeError:  # output piped into `head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        if args.command in ("finetune", "prune") and getattr(args, "output", None):
            command = shlex.join(["transferkit", *(sys.argv[1:] if argv is None else argv)])
            print(f"interrupted: the run resumes after its last finished epoch (kept in OUTPUT/.state/) when you "
                  f"run the same command again: {command}", file=sys.stderr)
        elif args.command == "tune" and getattr(args, "output", None):
            command = shlex.join(["transferkit", *(sys.argv[1:] if argv is None else argv)])
            print(f"interrupted: the search goes on from its finished trials (keras-tuner's state in "
                  f"OUTPUT/keras_tuner/) when you run the same command again: {command}", file=sys.stderr)
        else:
            print("interrupted.", file=sys.stderr)
        return 130
    except TransferkitError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
