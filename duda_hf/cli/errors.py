"""How every program ends on a problem: the project's own errors as one message and exit status 2.

The library raises exceptions; only the programs turn them into messages. An error the project raised on
purpose (a `raise` statement in duda_hf: a missing folder, an unknown recipe key, `--max_steps 0`, labels that
are not trainIds ...) carries its cause and its fix, so the program prints `error: <message>` on stderr, without
the traceback or the exceptions it was chained from, and returns 2. Anything else (a bug, an error inside a
library) keeps its traceback. `DUDA_DEBUG=1` shows the traceback of every error.

Ctrl-C outside training prints `interrupted` and returns 130; a training run stopped by a signal returns
128 + the signal number after saying where its checkpoint is (`duda_hf.training.preemption`).

With several processes (`accelerate launch`), a process that fails tells the others why (`Peers`): each of them
ends with `stopped because process N failed: <its one-line cause>` on stderr, where it would otherwise die of the
launcher's SIGTERM or of a collective's error, with a traceback. Every program leaves its process group before
Python shuts down (`leave_process_group`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import linecache
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
DEBUG_VARIABLE = "DUDA_DEBUG"
ERROR_EXIT = 2
PEER_SECONDS = 10  # the longest a failing process waits for the others to have said why they stop (see `Peers`)


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
    it is and ends the program with that status. One of several processes also tells the others why it failed, or
    says why it stops when another failed (`Peers`).
    """

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        peers = Peers.connect()
        try:
            return _run(main, argv, peers)
        finally:
            if peers is not None:
                peers.close()

    return run


def _run(main: Callable[[list[str] | None], int], argv: list[str] | None, peers: Peers | None) -> int:
    stopping = False
    try:
        status = main(argv)
    except KeyboardInterrupt:
        if debugging():
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        own = is_project_error(error) and not debugging()  # said in one line
        code = getattr(error, "exit_code", None)
        if isinstance(code, int):  # a stop every process agreed on, not a failure
            if not own:
                raise
            print(error, file=sys.stderr)
            status, stopping = code, True
        elif peers is not None and not peers.claim():
            status = ERROR_EXIT  # another process failed first, and this one has said so
            peers.await_launcher()  # the failing process ends first, so that the launcher names it
        else:
            line = f"error: {error}" if own else one_line(error)
            if own:
                print(line, file=sys.stderr, flush=True)
            if peers is not None:
                peers.tell(line)
            if not own:
                raise
            status = ERROR_EXIT
    # Here, past the `except`, its traceback is gone, and with it the frames that held the trainer (its
    # DistributedDataParallel model holds the process group).
    if peers is not None:
        peers.close()
    leave_process_group(stopping)
    return status


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, as the last line of a traceback says it."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def leave_process_group(stopping: bool = False) -> None:
    """End this process's part in a torch.distributed run, if it has one, with no gloo worker thread left running
    when Python shuts down.

    Each collective of the gloo backend runs on one of its worker threads, which frees the collective's tensors
    after the collective has returned. A tensor that Python no longer holds keeps its Python object alive through
    the C++ tensor, so that last free takes the GIL. A process that ends a few milliseconds after its last
    collective (`SyncBatchNormBuffers`' broadcast at the end of training) may reach interpreter shutdown before its
    worker took the GIL; a thread that asks for the GIL during shutdown is ended by `pthread_exit`, whose unwinding
    through the worker's C++ destructor calls `std::terminate`: SIGABRT, "terminate called without an active
    exception". And where the last reference to the group is dropped with the GIL held (a DDP model freed by
    Python, its C++ reducer holding the group), the group's destructor joins a worker that waits for that GIL:
    the process hangs.

    `destroy_process_group` drops the group with the GIL released: the destructor stops and joins every worker,
    each after it has freed what it held, whatever the timing. It only does so when it drops the last reference,
    so first the objects that still hold the group and are no longer reachable (a trainer in a reference cycle,
    frames of a traceback) are collected. No process waits for another here (a barrier would hold the other
    processes for as long as the main one exports and pushes the student, past the group's timeout on a slow
    upload).

    `stopping`: the program ends with a stop's status (143 after SIGTERM). The launcher answers the first process
    that ends with a non-zero status by sending SIGTERM to the others, which are ending too; they ignore it from
    here on, so each ends with the stop's status rather than as killed by the launcher.
    """
    torch = sys.modules.get("torch")  # a program that never imported torch has no process group
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    if stopping and threading.current_thread() is threading.main_thread():  # signals only reach the main thread
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    gc.collect()
    torch.distributed.destroy_process_group()


class Peers:
    """The other processes of this run, reached through the launcher's store, to tell them why this process failed
    and to hear why one of them did.

    Under torchrun (what `accelerate launch` runs with several processes) every process reaches the launcher's
    TCPStore, which outlives each of them and exists before any process group. Each process keeps a thread blocked
    on its inbox there. The first process to fail (`claim`, then `tell`) records its one-line cause under
    `failed` and puts it in every other inbox, then waits (at most `PEER_SECONDS`) until each other process that
    watches has answered, before it ends: the launcher sends SIGTERM to the others only once the first process
    has ended, so every process has said why it stops before any is stopped, and the launcher names the failing
    process as the root cause. A thread that gets a cause prints `stopped because process N failed: <cause>`,
    answers, and sends the rest of stderr (the tracebacks of the collectives that fail once the failing process
    is gone, the launcher's SIGTERM) to /dev/null, so that this is the process's last line.
    A collective cannot carry the cause: the others may be blocked in a different one.
    """

    _connected = False  # one per process: a program run inside another program leaves it to the outer one

    def __init__(self, store, rank: int, world_size: int):
        self.store, self.rank, self.world_size = store, rank, world_size
        self._lock = threading.Lock()  # taken once, by the thread that decides how this process ends
        self._closed = False
        inbox = store.clone()  # its own connection: a blocking wait holds the connection it waits on
        inbox.set_timeout(timedelta(days=7))
        store.set(f"watching/{rank}", "")
        self._thread = threading.Thread(target=self._watch, args=(inbox,), name="duda-peers", daemon=True)
        self._thread.start()

    @classmethod
    def connect(cls) -> Peers | None:
        """This process's peers, or None: one process, no torchrun launcher, or its store out of reach."""
        environ = os.environ
        if cls._connected or environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            return None
        try:
            rank, world_size = int(environ["RANK"]), int(environ["WORLD_SIZE"])
            if world_size < 2:
                return None
            import torch.distributed as dist

            store = dist.TCPStore(
                environ["MASTER_ADDR"],
                int(environ["MASTER_PORT"]),
                is_master=False,
                wait_for_workers=False,
                timeout=timedelta(seconds=PEER_SECONDS),
            )
            prefix = f"duda_hf/peers/attempt_{environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"  # a restarted run starts afresh
            peers = cls(dist.PrefixStore(prefix, store), rank, world_size)
        except Exception:  # without it, the processes end as they did before
            return None
        cls._connected = True
        return peers

    def _watch(self, inbox) -> None:
        while True:
            try:
                message = inbox.queue_pop(f"inbox/{self.rank}").decode()
                break
            except Exception as error:
                if "timeout" not in str(error).lower():
                    return  # the store is gone: the launcher has ended
        if not message or not self._lock.acquire(blocking=False):
            return  # "": this process ends; the lock taken: the main thread ends it with its own words
        rank, _, cause = message.partition(" ")
        print(f"stopped because process {rank} failed: {cause}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            inbox.set(f"over/{self.rank}", "")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # the rest of stderr, C++'s included
        os.close(devnull)

    def claim(self) -> bool:
        """This process failed: True if it is to say why; False if another process failed first and this one has
        already said so. From here on this process ignores SIGTERM (the launcher's, sent once another process has
        ended), and ends with its own status."""
        if not self._lock.acquire(blocking=False):
            return False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return True

    def tell(self, line: str) -> None:
        """Give the other processes `line`, the cause of this process's failure, if no other process failed first;
        wait until each that watches has answered (at most `PEER_SECONDS`)."""
        message = f"{self.rank} {line.splitlines()[0] if line else ''}"
        # a process that cannot be told ends as it did before: by a collective's error or the launcher's SIGTERM
        with contextlib.suppress(Exception):
            if self.store.compare_set("failed", "", message).decode() == message:
                for rank in range(self.world_size):
                    if rank != self.rank:
                        self.store.queue_push(f"inbox/{rank}", message)
            self.close()
            others = [f"over/{rank}" for rank in range(self.world_size) if rank != self.rank and self.store.check([f"watching/{rank}"])]
            if others:
                self.store.wait(others, timedelta(seconds=PEER_SECONDS))

    def await_launcher(self, seconds: float = PEER_SECONDS) -> None:
        """This process stops because another failed: wait (at most `seconds`) for the launcher's SIGTERM, which it
        sends once the failing process has ended, so that this one never ends first (the launcher names the first
        process to end as the root cause). The collective this process was blocked in can fail before that, when the
        failing process leaves the process group on its way out."""
        if threading.current_thread() is not threading.main_thread():
            return
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        stopped.wait(seconds)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # this process now ends with its own status

    def close(self) -> None:
        """This process is done with the others: it says so (`over/<rank>`), and its watching thread ends."""
        if self._closed:
            return
        self._closed = True
        self._lock.acquire(blocking=False)  # a cause arriving now is not why this process stops
        with contextlib.suppress(Exception):
            self.store.set(f"over/{self.rank}", "")
            self.store.queue_push(f"inbox/{self.rank}", "")
        self._thread.join(PEER_SECONDS)
        Peers._connected = False
