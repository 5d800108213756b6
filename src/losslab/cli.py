"""What every command does with errors: one clear line for the user, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from losslab.config import ConfigError
from losslab.storage import StageInputError

EXIT_USER_ERROR = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by what the user asked for, including a diverging loss."""
    errors: tuple[type[BaseException], ...] = (ConfigError, StageInputError)
    if "losslab.training" in sys.modules:
        errors += (sys.modules["losslab.training"].TrainingDiverged,)
    return errors


@contextmanager
def reported_errors(program: str) -> Iterator[None]:
    """Turn user errors and interruptions into a message on stderr and an exit status."""
    from losslab.tracking import Terminated

    try:
        yield
    except (KeyboardInterrupt, Terminated) as stop:
        print(f"{program}: interrupted ({stop or 'Ctrl-C'})", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except _user_errors() as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
