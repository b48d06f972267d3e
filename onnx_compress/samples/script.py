"""What every runnable sample script (``samples/*.py``) starts with: its flags (the docstring's first
line as description, ``--out``) and, once parsed, warnings-only logging and the output folder."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

__all__ = ["script_parser", "script_args"]


def script_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """A sample's parser: ``doc``'s first line as its description and ``--out`` (default ``out``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(out), help="output folder")
    return parser


def script_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed flags, after setting the logs to warnings (one line each) and creating ``--out``."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    return args
