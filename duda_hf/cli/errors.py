"""How every program ends on a problem: the project's own errors as one message and exit status 2.

The library raises exceptions; only the programs turn them into messages. An error the project raised on
purpose (a `raise` statement in duda_hf: a missing folder, an unknown recipe key, `--max_steps 0`, labels that
are not trainIds ...) carries its cause and its fix, so the program prints `error: <message>` on stderr, without
the traceback or the exceptions it was chained from, and returns 2. Anything else (a bug, an error inside a
library) keeps its traceback. `DUDA_DEBUG=1` shows the traceback of every error.

Ctrl-C outside training prints `interrupted` and returns 130; a training run stopped by a signal returns
128 + the signal number after saying where its checkpoint is (`duda_hf.training.preemption`).

A program that ends cleanly (its status, or a stop with an `exit_code`) under `accelerate launch` leaves its
process group before Python shuts down (`leave_process_group`).
"""

from __future__ import annotations

import functools
import linecache
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
DEBUG_VARIABLE = "DUDA_DEBUG"
ERROR_EXIT = 2
WORKER_GRACE_SECONDS = 0.25  # see `leave_process_group`


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
            status = main(argv)
            leave_process_group()
            return status
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
            if isinstance(code, int):  # a stop every process agreed on: nothing is left in flight
                leave_process_group(stopping=True)
            return code if isinstance(code, int) else ERROR_EXIT

    return run


def leave_process_group(stopping: bool = False) -> None:
    """End this process's part in a torch.distributed run, if it has one, leaving no gloo worker thread holding a
    tensor when Python shuts down.

    A gloo worker frees the tensors of the collective it ran after that collective has returned, and needs the GIL
    to do so. A process that ends within a few milliseconds of its last collective (`SyncBatchNormBuffers`' broadcast
    at the end of training) reaches interpreter shutdown first, and the worker's late bid for the GIL then aborts the
    process (SIGABRT) although its work was done; freeing the group while a worker still waits deadlocks instead.
    So: a pause in which the workers take the GIL and free what they hold, then the group is destroyed. No process
    waits for another here (a barrier would hold the other processes for as long as the main one exports and
    pushes the student, past the group's timeout on a slow upload).

    `stopping`: the program ends with a stop's status (143 after SIGTERM). The launcher answers the first process
    that ends with a non-zero status by sending SIGTERM to the others, which are ending too; they ignore it from
    here on, so each ends with the stop's status rather than as killed by the launcher.

    Only at a clean end: after a failure a collective may still be in flight.
    """
    torch = sys.modules.get("torch")  # a program that never imported torch has no process group
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    if stopping and threading.current_thread() is threading.main_thread():  # signals only reach the main thread
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(WORKER_GRACE_SECONDS)
    torch.distributed.destroy_process_group()
