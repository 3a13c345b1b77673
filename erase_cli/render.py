"""Output: data to stdout (JSON through orjson, never rich), people-facing text to stderr."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import orjson
from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def emit_json(obj) -> None:
    """One JSON object on one line of stdout (NDJSON for streams)."""
    sys.stdout.buffer.write(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    sys.stdout.flush()


# C0 and C1 control characters and DEL, except newline: an id or a text holding terminal escape
# sequences must not reach the operator's terminal as commands. JSON output stays exact.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """`text` with control characters shown as escapes (\\x1b), safe to print to a terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def show(text: str) -> None:
    """A line of human output on stdout, control characters escaped."""
    out.print(clean(text), markup=False)


def say(message: str) -> None:
    err.print(clean(message), markup=False)


def error(kind: str, message: str, as_json: bool) -> None:
    err.print(f"error: {clean(message)}", markup=False, style="bold red")
    if as_json:
        emit_json({"error": {"kind": kind, "message": message}})


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback (stage, done, total) drawing rich bars with a rate on stderr."""
    if not enabled or not err.is_terminal:
        yield lambda stage, done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, rate="")
            task = bar.tasks[tasks[stage]]
            speed = task.speed
            bar.update(tasks[stage], completed=done, total=total, rate=f"{speed:,.0f}/s" if speed else "")

        yield update
