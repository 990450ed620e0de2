"""Shared pieces of the command-line tools: the help formatter, a parser whose errors are one line, and
``argparse`` ``type=`` validators, so that a bad value is refused at parse time with a one-line
``error: argument --steps: ...`` instead of a traceback later in the run."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (but ``None``: such an option's help says what its absence means) and keeps the
    description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors are one line on stderr, ``PROG: error: MESSAGE``, and exit
    status 2 (``--help`` shows the usage); its subparsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def bounded(kind: type[int | float], low: float, *, inclusive: bool = True,
            high: float | None = None) -> Callable[[str], int | float]:
    """A ``type=`` parsing ``kind`` (``int`` or ``float``; floats must be finite) that is ``>= low``
    (``> low`` when not ``inclusive``) and, given ``high``, ``<= high``."""
    noun = "an integer" if kind is int else "a number"
    bound = f"{'>=' if inclusive else '>'} {low}" + ("" if high is None else f" and <= {high}")

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not (math.isfinite(value) and (value >= low if inclusive else value > low)
                and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
positive_float = bounded(float, 0, inclusive=False)
non_negative_float = bounded(float, 0)
unit_float = bounded(float, 0, high=1)  # in [0, 1]


def size_list(text: str) -> list[int]:
    """A ``type=`` parsing a comma list of whole counts >= 1 (``1e3`` allowed; empty: none)."""
    sizes = []
    for item in filter(None, text.split(",")):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 1 and value == int(value)):
            raise argparse.ArgumentTypeError(f"expected a comma list of whole counts >= 1, got {item!r} in {text!r}")
        sizes.append(int(value))
    return sizes
