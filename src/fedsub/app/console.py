"""The terminal side of the commands: one rich console on stderr, and progress bars that vanish when done."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def make_console(quiet: bool = False) -> Console:
    # Logs (CI, files) get 120 columns so the results table is not cut; terminals keep their width.
    return Console(stderr=True, quiet=quiet, width=None if sys.stderr.isatty() else 120)


def progress_bars(console: Console) -> Progress:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    return Progress(*columns, console=console, transient=True, disable=console.quiet)
