"""What the commands (``ablation.run``, ``ablation.report``, ``ablation.ui``) share."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from ablation.errors import UserError
from ablation.redaction import redact_output


def sweep_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the sweep file, ``--set KEY=VALUE`` (repeatable) and ``--debug``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("sweep", help="the sweep file (YAML)")
    add_overrides(parser, "override a key of the sweep file, e.g. train.epochs=1 (repeatable)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return parser


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def configure_logging(debug: bool) -> None:
    """Warnings only, without MLflow's set-up notes or TensorFlow's retracing notes, but this
    package's own notes (a machine timed once for the auto settings); never a password
    (:func:`ablation.redaction.redact_output`)."""
    redact_output()
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    if not debug:
        logging.getLogger("ablation").setLevel(logging.INFO)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


def user_error(exc: UserError, debug: bool) -> int:
    """A user's mistake as one line on stderr and exit code 2; ``--debug`` keeps the traceback."""
    if debug:
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    return 2


def stop_on_signals() -> None:
    """``kill`` (SIGTERM) and a closed terminal (SIGHUP) stop a command as Ctrl-C does:
    ``KeyboardInterrupt`` unwinds it, so what it started is stopped and recorded.

    Later signals are ignored, so that a second one cannot cut that clean-up short.
    """

    def stop(signum: int, frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
