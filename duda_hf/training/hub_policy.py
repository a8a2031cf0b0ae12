"""What `DudaTrainer` pushes to the Hub, and where: the repo root holds the deployable student, checkpoints live in subfolders.

`Trainer` pushes the output folder to the repo root at every save and at the end. Here the root keeps the
exported student (`output_dir/student/`, a plain SegFormer with its model card), so that
`from_pretrained(repo_id)` always loads the model to deploy, not the training container of every network:

| `--hub_strategy` | at each save | at the end (`push_to_hub`) |
|---|---|---|
| `end` | nothing | the student to the root |
| `every_save`, `checkpoint` | the checkpoint to `last-checkpoint/` | the student to the root |
| `all_checkpoints` | the checkpoint to `checkpoint-N/` | the student to the root |

Checkpoints are pushed in the background (`CheckpointPushes`): training goes on while one uploads. One upload runs
at a time. The rule for a checkpoint saved while an upload runs is "queue the newest": it waits, and a newer one
saved before the upload ends takes its place (the one it replaces is not pushed), so the repo always ends with the
run's last checkpoint, where `Trainer`'s rule (skip a save that comes while an upload runs) can leave an older one
there. With `--hub_always_push true` every checkpoint waits its turn instead, none is replaced. What is uploaded is a
snapshot of the checkpoint: its files hard-linked (copied where the file system has no hard links) into
`output_dir/.hub-push/` when it is saved, so that the rotation of `--save_total_limit`, which deletes old checkpoint
folders, cannot delete files under an upload. A snapshot is removed once its upload has ended, and the folder
with it; one that an interrupted run left is removed when the next run creates its repo.

A failed checkpoint upload is one warning (the cause and the fix, `duda_hf.export.hub.HubError`) and training goes on:
the local checkpoint is whole, and the next save pushes again. `DudaTrainer.push_to_hub`, at the end of the run,
first waits for the checkpoint uploads still running or waiting and says in one line how long it waited; a program
that ends without it (an error, a stop on a signal) still waits for them before it exits. The wait is on the main
process only, after the last collective operation of the run, so under DDP no other process waits for an upload
(it would abort after `--ddp_timeout`).

Pushes go through `duda_hf.export.hub`, whose errors (offline, no token, refused) say the cause and the fix. Only the
main process pushes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from duda_hf.export.hub import HubError, background_upload, check_export, create_repo, upload_folder

logger = logging.getLogger(__name__)

SNAPSHOT_DIR = ".hub-push"  # in the output folder: the snapshots of the checkpoints waiting for or under an upload


def run_repo_id(args) -> str:
    """`--hub_model_id`, or the output folder's name (as `Trainer` names the repo)."""
    return args.hub_model_id or Path(args.output_dir).absolute().name


def checkpoint_path_in_repo(hub_strategy: str, checkpoint_folder: str) -> str | None:
    """The repo folder a checkpoint goes to under `hub_strategy`, or None when checkpoints are not pushed."""
    if hub_strategy == "end":
        return None
    return Path(checkpoint_folder).name if hub_strategy == "all_checkpoints" else "last-checkpoint"


def create_run_repo(args, token: str | None = None, private: bool | None = None) -> str:
    """Create (or find) the run's repo; returns its id. Stops with the cause and the fix offline or without a token."""
    token = token if token is not None else args.hub_token
    private = bool(private if private is not None else args.hub_private_repo)
    return create_repo(run_repo_id(args), private=private, revision=args.hub_revision, token=token, local=args.output_dir)


def push_checkpoint(args, repo_id: str, checkpoint_folder: str, step: int, upload_from: str | None = None) -> str | None:
    """Upload a checkpoint folder where `checkpoint_path_in_repo` says (nothing for `hub_strategy` end), blocking;
    returns the commit URL. `upload_from`: a snapshot of the folder to read instead (`snapshot_checkpoint`)."""
    path_in_repo = checkpoint_path_in_repo(args.hub_strategy, checkpoint_folder)
    if path_in_repo is None:
        return None
    return upload_folder(
        upload_from or checkpoint_folder,
        repo_id,
        f"Training in progress, step {step}, checkpoint",
        path_in_repo=path_in_repo,
        revision=args.hub_revision,
        token=args.hub_token,
        # last-checkpoint/ holds exactly the checkpoint pushed: no file of an earlier one (or format) stays beside it
        delete_patterns="*",
        local=checkpoint_folder,
    )


def push_student(
    args,
    repo_id: str,
    commit_message: str | None,
    revision: str | None = None,
    token: str | None = None,
    blocking: bool = True,
) -> str | Future[str]:
    """Upload `output_dir/student/` (checked to be a complete export) to the repo root; returns the commit URL, or with
    `blocking=False` the upload's Future (its result the commit URL, its exception a HubError)."""
    return upload_folder(
        check_export(Path(args.output_dir) / "student"),
        repo_id,
        commit_message or "End of training",
        revision=revision or args.hub_revision,
        token=token if token is not None else args.hub_token,
        blocking=blocking,
    )


def snapshot_checkpoint(checkpoint_folder: str, staging: str) -> str:
    """A new folder in `staging` holding the files of `checkpoint_folder` as hard links (copies where the file system
    has none): they stay readable, unchanged, when the checkpoint folder is deleted. Returns its path."""
    os.makedirs(staging, exist_ok=True)
    snapshot = tempfile.mkdtemp(prefix=f"{Path(checkpoint_folder).name}-", dir=staging)
    try:
        shutil.copytree(checkpoint_folder, snapshot, copy_function=_link_or_copy, dirs_exist_ok=True)
    except BaseException:
        shutil.rmtree(snapshot, ignore_errors=True)
        raise
    return snapshot


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # no hard links on this file system (or across devices): a copy
        shutil.copy2(source, destination)


@dataclass
class _Push:
    checkpoint: str  # the checkpoint folder, as saved
    snapshot: str  # what is uploaded
    step: int


class CheckpointPushes:
    """The checkpoint uploads of a run on the main process: in the background, one at a time, the newest waiting.

    `push` takes a snapshot of a saved checkpoint and returns at once; the upload runs in `duda_hf.export.hub`'s
    background thread. A checkpoint saved while an upload runs waits for it; a newer one replaces it as the one
    waiting (every one waits its turn with `hub_always_push`). `wait` blocks until none runs or waits.

    Args:
        args: the run's `DudaConfig` (`output_dir`, `hub_strategy`, `hub_always_push`, `hub_revision`, `hub_token`).
        repo_id: the run's repo (`create_run_repo`).
    """

    def __init__(self, args, repo_id: str):
        self.args, self.repo_id = args, repo_id
        self.staging = os.path.join(args.output_dir, SNAPSHOT_DIR)
        self._lock = threading.Lock()
        self._waiting: list[_Push] = []
        self._running: Future | None = None  # the background job that uploads what waits, until nothing does
        self._last: _Push | None = None  # the newest checkpoint handed to the background job
        if os.path.isdir(self.staging):
            shutil.rmtree(self.staging, ignore_errors=True)
            logger.warning("removed %s, the snapshots of checkpoint uploads an interrupted run left (never read)", self.staging)

    def push(self, checkpoint_folder: str, step: int) -> None:
        """Upload the saved checkpoint in the background, where `--hub_strategy` says; nothing for `end`."""
        if checkpoint_path_in_repo(self.args.hub_strategy, checkpoint_folder) is None:
            return
        name = Path(checkpoint_folder).name
        with self._lock:  # the background job removes the staging folder under this lock when it ends
            try:
                snapshot = snapshot_checkpoint(checkpoint_folder, self.staging)
            except OSError as error:
                logger.warning(
                    "%s is not pushed to '%s': its snapshot in %s could not be written (%s); training goes on, the next "
                    "save pushes again. Free disk space if it is full.",
                    name,
                    self.repo_id,
                    self.staging,
                    error,
                )
                return
            job = _Push(checkpoint_folder, snapshot, step)
            if getattr(self.args, "hub_always_push", False):
                dropped = []
                self._waiting.append(job)
            else:
                dropped, self._waiting = self._waiting, [job]
            for old in dropped:  # under the lock, so that the job's removal of the emptied staging folder comes after
                shutil.rmtree(old.snapshot, ignore_errors=True)
            if self._running is None:
                self._running = background_upload(self._upload_waiting)
        for old in dropped:
            logger.info("%s is not pushed: %s, saved while an upload ran, takes its place", Path(old.checkpoint).name, name)

    def _upload_waiting(self) -> None:
        """The background job: upload what waits, oldest first, until nothing does (a failed upload is a warning)."""
        while True:
            with self._lock:
                if not self._waiting:
                    self._running = None
                    with contextlib.suppress(OSError):
                        os.rmdir(self.staging)  # when empty
                    return
                job = self._last = self._waiting.pop(0)
            try:
                self._upload(job)
            except BaseException:  # not expected (`_upload` warns on every error): stop, so that a next push starts anew
                with self._lock:
                    self._running = None
                    for left in self._waiting:
                        shutil.rmtree(left.snapshot, ignore_errors=True)
                    self._waiting = []
                raise
            finally:
                shutil.rmtree(job.snapshot, ignore_errors=True)

    def _upload(self, job: _Push) -> None:
        name = Path(job.checkpoint).name
        started = time.monotonic()
        try:
            url = push_checkpoint(self.args, self.repo_id, job.checkpoint, job.step, upload_from=job.snapshot)
        except HubError as error:
            logger.warning("%s is not pushed, training goes on: %s", name, error)
        except Exception as error:  # anything else the Hub client raises: the run goes on, its checkpoint is whole
            text = " ".join(str(error).split())  # one line
            logger.warning("%s is not pushed to '%s', training goes on: %s: %s", name, self.repo_id, type(error).__name__, text)
        else:
            where = checkpoint_path_in_repo(self.args.hub_strategy, job.checkpoint)
            logger.info("pushed %s to %s/%s in %.1f s: %s", name, self.repo_id, where, time.monotonic() - started, url)

    def wait(self) -> float | None:
        """Block until no checkpoint upload runs or waits, and say in one log line how long that took; returns the
        seconds waited, or None when none was running."""
        with self._lock:
            running = self._running
            newest = self._waiting[-1] if self._waiting else self._last
        if running is None:
            return None
        started = time.monotonic()
        try:
            running.result()  # a failed upload was one warning; anything else stopped the job
        except Exception as error:
            logger.warning(
                "the checkpoint uploads to '%s' stopped: %s: %s", self.repo_id, type(error).__name__, " ".join(str(error).split())
            )
        waited = time.monotonic() - started
        logger.info(
            "waited %.1f s for the checkpoint uploads to '%s' to end (the newest: %s)",
            waited,
            self.repo_id,
            Path(newest.checkpoint).name if newest else "none",
        )
        return waited
