"""How every program ends on a problem: the project's own errors as one message and exit status 2.

The library raises exceptions; only the programs turn them into messages. An error the project raised on
purpose (a `raise` statement in duda_hf: a missing folder, an unknown recipe key, `--max_steps 0`, labels that
are not trainIds ...) carries its cause and its fix, so the program prints `error: <message>` on stderr, without
the traceback or the exceptions it was chained from, and returns 2. Anything else (a bug, an error inside a
library) keeps its traceback. `DUDA_DEBUG=1` shows the traceback of every error.

Ctrl-C outside training prints `interrupted` and returns 130; a training run stopped by a signal returns
128 + the signal number after saying where its checkpoint is (`duda_hf.training.preemption`).
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
from collections.abc import Callable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
DEBUG_VARIABLE = "DUDA_DEBUG"
ERROR_EXIT = 2


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def is_project_error(error: BaseException) -> bool:
    """True when a `raise` statement of duda_hf raised `error` (not Python or a library on its behalf)."""
    if not isinstance(error, Exception) or error.__traceback__ is None:
        return False
    traceback = error.__traceback__
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    filename = traceback.tb_frame.f_code.co_filename
    if not Path(filename).resolve().is_relative_to(PACKAGE):
        return False
    return linecache.getline(filename, traceback.tb_lineno).lstrip().startswith("raise ")


def program(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Decorate a program's `main(argv)`: project errors become one message on stderr and exit status 2.

    An error with an `exit_code` (`duda_hf.training.preemption.TrainingPreempted`: a stop, not a failure) is printed as
    it is and ends the program with that status.
    """

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except KeyboardInterrupt:
            if debugging():
                raise
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as error:
            if debugging() or not is_project_error(error):
                raise
            code = getattr(error, "exit_code", None)
            print(error if isinstance(code, int) else f"error: {error}", file=sys.stderr)
            return code if isinstance(code, int) else ERROR_EXIT

    return run
