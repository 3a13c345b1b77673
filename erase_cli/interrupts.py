"""SIGINT, SIGTERM and SIGHUP during a command: all or nothing, the same as SIGKILL.

A writing command has one commit point (journal/journal.json written). A signal before it raises
:class:`Interrupted` where the program is, so the transaction rolls back and the command says
"nothing changed" and exits 128 + the signal number. From the commit point on, the batch is
already decided: the first signal is only remembered, the batch is finished (purge included) and
the command ends as if it had not been interrupted; a second signal ends the process on the spot,
leaving the committed journal for the next writing command, exactly as SIGKILL would.

Only the command line installs the handlers (:func:`guard`); the core merely marks its commit
point (:func:`committing`), its must-finish steps (:func:`deferred`) and the files of its own
that must not outlive the process (:func:`removing`), which are no-ops when no guard is active,
so library callers keep their own signal handling.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .errors import ExitStatus

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A signal arrived before the commit point. A BaseException, like KeyboardInterrupt, so that
    `except Exception` in the core never swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return ExitStatus.signal(self.signum)


@dataclass
class _Guard:
    say: Callable[[str], None]
    committed: bool = False  # the commit point has been passed: never raise again
    depth: int = 0  # inside deferred(): remember a signal, raise it on leaving
    pending: int | None = None
    leftovers: set[str] = field(default_factory=set)  # removing(): files to delete before _exit

    def handle(self, signum: int, _frame) -> None:
        if not (self.committed or self.depth):
            raise Interrupted(signum)
        if self.pending is not None:
            # Second signal while finishing: stop now. The committed journal stays on disk and
            # the next writing command completes it (the same state a SIGKILL leaves); no
            # cleanup code runs after _exit, so the files that would have been removed go now.
            for path in self.leftovers:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            os._exit(ExitStatus.signal(signum))
        self.pending = signum
        if self.committed:
            self.say(
                f"received {signal.Signals(signum).name}: finishing the committed change first "
                "(signal again to stop at once and leave it to the next writing command)"
            )


_active: _Guard | None = None


@contextlib.contextmanager
def guard(say: Callable[[str], None]) -> Iterator[None]:
    """Install the handlers for the duration of one command (main thread only)."""
    global _active
    state = _Guard(say)
    previous = {sig: signal.signal(sig, state.handle) for sig in SIGNALS}
    _active = state
    try:
        yield
    finally:
        _active = None
        for sig, handler in previous.items():
            # After a commit the command is done but for its exit: a signal now must neither
            # claim "nothing changed" (the previous handler) nor kill the process during
            # interpreter shutdown (Python resets handlers to the defaults there), so the rest
            # of the process ignores it.
            signal.signal(sig, signal.SIG_IGN if state.committed else handler)


def find(exc: BaseException | None) -> Interrupted | None:
    """The Interrupted behind `exc`, if any: Python wraps an exception raised inside some
    machinery (an import's __set_name__, say) in another one, with the original as its cause."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, Interrupted):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def committing() -> None:
    """Called just before the commit point is written: from now on, signals are deferred."""
    if _active is not None:
        _active.committed = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A step that must not stop half-way (completing a journal found on disk): a signal during it
    takes effect once it is done, unless the command has committed a change of its own."""
    state = _active
    if state is None:
        yield
        return
    state.depth += 1
    try:
        yield
    finally:
        state.depth -= 1
    if not state.depth and not state.committed and state.pending is not None:
        signum, state.pending = state.pending, None
        raise Interrupted(signum)


@contextlib.contextmanager
def removing(path: str | os.PathLike) -> Iterator[None]:
    """While in this block, `path` (a file of the command's own, such as a half-written export)
    is deleted should a second signal end the process on the spot. Every other way out is the
    caller's to clean up (a `finally`); a SIGKILL, of course, leaves the file."""
    state = _active
    if state is None:
        yield
        return
    name = os.fspath(path)
    state.leftovers.add(name)
    try:
        yield
    finally:
        state.leftovers.discard(name)


def test_point(name: str) -> None:
    """Test hooks at the transaction's named points, inert unless a variable names this point:
    ERASE_TEST_CRASH_AT=<point> ends the process on the spot, as SIGKILL or a power cut would;
    ERASE_TEST_SIGNAL_AT=<point>:<SIG>[,<point>:<SIG>...] sends the process that signal there."""
    if os.environ.get("ERASE_TEST_CRASH_AT") == name:
        os._exit(137)
    spec = os.environ.get("ERASE_TEST_SIGNAL_AT")
    if spec:
        for item in spec.split(","):
            point, _, sig = item.rpartition(":")
            if point == name:
                os.kill(os.getpid(), signal.Signals[sig])
