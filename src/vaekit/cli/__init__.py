"""The ``vaekit`` command line: a thin layer over :mod:`vaekit.train`, :mod:`vaekit.runs`,
:mod:`vaekit.visualize`, :mod:`vaekit.evaluate` and :mod:`vaekit.data`.

Each module here adds its subcommands' parsers beside the functions that run them
(:mod:`~vaekit.cli.train`, :mod:`~vaekit.cli.inspect_run`, :mod:`~vaekit.cli.evaluate`). A
:class:`~vaekit.errors.VaekitError` (bad path, unknown key, corrupt file…) is printed as one line
and the command exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from vaekit.allocator import keep_freed_memory
from vaekit.cli import evaluate, inspect_run, train
from vaekit.errors import VaekitError

EXIT_USER_ERROR = 2
DEBUG_HELP = "show tracebacks for user errors"


def build_parser() -> argparse.ArgumentParser:
    """The ``vaekit`` parser; each sub-parser's ``run`` default is the function that runs it."""
    parser = argparse.ArgumentParser(prog="vaekit", description="Train, sample and inspect VAEs and VQ-VAEs.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parsers(sub)
    inspect_run.add_parsers(sub)
    evaluate.add_parsers(sub)
    for command in sub.choices.values():  # `vaekit train --debug` as well as `vaekit --debug train`
        # SUPPRESS: when it is not given after the command, the value before it stands
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # every command allocates the same large tensors step after step
    try:
        rc = args.run_command(args)  # None, or the status of a run stopped by a signal
    except VaekitError as err:
        if args.debug:
            raise
        print(f"vaekit: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
