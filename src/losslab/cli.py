"""What every command does with errors: one clear line for the user, never a traceback."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra.errors import CompactHydraException

from losslab.config import ConfigError
from losslab.storage import StageInputError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def clock(seconds: float) -> str:
    """A duration as ``m:ss``, or ``h:mm:ss`` from an hour on."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (see losslab.tracking) so a run ends KILLED and the
    command exits as on Ctrl-C."""


_TERMINATED_BY: str | None = None  # set once SIGTERM has told this process to stop
_CTRL_C = False  # set once SIGINT has reached this process within sigterm_as_exception
INTERRUPTIONS = (KeyboardInterrupt, Terminated)  # the user stopped the command


class JobFailed(CompactHydraException):
    """A sweep job's user error: Hydra marks that job failed, runs the others, and at the end
    reports the message without a traceback (it prints compact exceptions as one line)."""


@contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread, so that runs end KILLED and the
    command exits through :func:`reported_errors` as on Ctrl-C (Python's default would end the
    process at once, with no cleanup at all). Ctrl-C still raises Python's KeyboardInterrupt,
    and is remembered too, for :func:`raise_if_terminated` (where SIGINT is ignored, it stays
    ignored)."""

    def raise_terminated(signum: int, frame: Any) -> None:
        global _TERMINATED_BY
        _TERMINATED_BY = f"terminated by signal {signum}"
        raise Terminated(_TERMINATED_BY)

    def raise_interrupt(signum: int, frame: Any) -> None:
        global _CTRL_C
        _CTRL_C = True
        signal.default_int_handler(signum, frame)

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: leave signal handling to the caller
        yield
        return
    ctrl_c = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ctrl_c:
        signal.signal(signal.SIGINT, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if ctrl_c:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def raise_if_terminated() -> None:
    """Raise :class:`Terminated` (or KeyboardInterrupt) again if SIGTERM (or Ctrl-C) has
    arrived: for a loop that calls code which swallows every exception (Keras's
    ``pythonify_logs`` has a bare ``except``; a swallowed Ctrl-C left the train stage hanging
    in TensorFlow's next call)."""
    if _TERMINATED_BY is not None:
        raise Terminated(_TERMINATED_BY)
    if _CTRL_C:
        raise KeyboardInterrupt


def as_interruption(error: BaseException) -> BaseException:
    """``error``, or the :class:`Terminated` it stands for once SIGTERM has arrived.

    The handler raises wherever the main thread is, and library code may swallow what it raises
    and fail later on what it left undone: TensorFlow tracing a graph does (seen: a TypeError
    about a shape it never finished). The user still stopped the command.
    """
    if _TERMINATED_BY is None or isinstance(error, INTERRUPTIONS):
        return error
    return Terminated(_TERMINATED_BY)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by what the user asked for, including a diverging loss."""
    errors: tuple[type[BaseException], ...] = (ConfigError, StageInputError)
    if "losslab.training" in sys.modules:
        errors += (sys.modules["losslab.training"].TrainingDiverged,)
    return errors


@contextmanager
def reported_errors(program: str, raise_instead: type[Exception] | None = None) -> Iterator[None]:
    """Turn user errors and interruptions into a message on stderr and an exit status.

    With ``raise_instead``, a user error is re-raised as that exception (with the same one-line
    message) instead of exiting, so a caller such as a sweep can go on; an interruption then
    goes on unchanged to the sweep, which reports it once.
    """
    try:
        yield
    except (*INTERRUPTIONS, Exception) as caught:
        error = as_interruption(caught)
        if isinstance(error, INTERRUPTIONS):
            if raise_instead is not None:
                if error is caught:
                    raise
                raise error from caught
            reason = "Ctrl-C" if isinstance(error, KeyboardInterrupt) else str(error)
            print(f"{program}: interrupted ({reason})", file=sys.stderr)
            raise SystemExit(EXIT_INTERRUPTED) from None
        if not isinstance(error, _user_errors()):
            raise
        print(f"{program}: error: {error}", file=sys.stderr)
        if raise_instead is not None:
            raise raise_instead(str(error)) from None
        raise SystemExit(EXIT_USER_ERROR) from None
