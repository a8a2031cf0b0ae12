"""Resuming a run: which checkpoint it continues from and what that restores.

`--resume_from_checkpoint DIR|last` continues a run exactly (docs/reproducibility.md). `resolve_checkpoint` says
which checkpoint and step it continues from and what the checkpoint restores, and that `last` starts from step 0
when the output folder has no checkpoint. (`train_loss` over the whole run after a resume: the `RunLoss` callback,
duda_hf/training/callbacks.py.)
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from duda_hf.networks.frozen import FROZEN_SOURCES_KEY, check_frozen_networks
from duda_hf.networks.loading import NETWORKS_FILE
from duda_hf.training.checkpointing import TRAINING_ARGS_FILE
from duda_hf.training.state_files import has_training_state

logger = logging.getLogger(__name__)

LAST = ("last", "true", "True")
# what a checkpoint file restores (DudaTrainer checkpoints: docs/design.md, "Training contract")
RESTORES = (
    ("model.safetensors", "every trained network (students, EMA teacher) and the class inconsistency state"),
    ("optimizer.safetensors", "the optimizer"),
    ("scheduler.json", "the learning-rate schedule"),
    ("rng_state*.safetensors", "the random state"),
)
# the same in a checkpoint of an earlier duda-hf (pickles, read by Trainer with torch.load(weights_only=True))
OLDER_RESTORES = (
    RESTORES[0],
    ("optimizer.pt", "the optimizer"),
    ("scheduler.pt", "the learning-rate schedule"),
    ("rng_state*.pth", "the random state"),
)
# a checkpoint is complete with these (`networks.json`: each network's config, for `CHECKPOINT@role`)
REQUIRED = ("trainer_state.json", "model.safetensors", NETWORKS_FILE)
# `--resume_from_checkpoint ORG/NAME[/checkpoint-N][@REVISION]`: a checkpoint pushed to the Hub
HUB_CHECKPOINT = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<folder>checkpoint-\d+|last-checkpoint))?(?:@(?P<revision>[\w./-]+))?$")


class ResumeError(ValueError):
    """A `--resume_from_checkpoint` that names no checkpoint."""


def resolve_checkpoint(value: str | None, output_dir: str, announce: bool = True) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint` means (None: start from step 0), said in the log.

    Args:
        value: a checkpoint folder, `last` (the newest complete `checkpoint-N` of `output_dir`), a checkpoint pushed
            to the Hub (`ORG/NAME`, `ORG/NAME/checkpoint-N`, either with `@REVISION`: `download_checkpoint`), or empty.
        announce: log what the run continues from (the main process).

    Raises:
        ResumeError: `value` is a folder that is not a checkpoint, naming the checkpoints there are.
    """
    if not value or value in ("false", "False"):
        return None
    on_hub = HUB_CHECKPOINT.match(value) and not os.path.exists(value.split("/", 1)[0])  # not a local path either
    if value not in LAST and on_hub:
        value = download_checkpoint(value, announce=announce)
    if value in LAST:
        checkpoint = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if checkpoint is None:
            if announce:
                logger.warning("--resume_from_checkpoint %s: no checkpoint in %s, so training starts from step 0", value, output_dir)
            return None
    else:
        checkpoint = value
    state_file = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(state_file):
        parent = os.path.dirname(os.path.abspath(checkpoint))
        found = sorted(glob.glob(os.path.join(parent, "checkpoint-*"))) if os.path.isdir(parent) else []
        raise ResumeError(
            f"--resume_from_checkpoint '{checkpoint}' is not a checkpoint (no trainer_state.json). Checkpoints in "
            f"{parent}: {[os.path.basename(path) for path in found] or 'none'}; or pass --resume_from_checkpoint last."
        )
    if announce:
        state = json.loads(Path(state_file).read_text())
        older = not has_training_state(checkpoint) and os.path.isfile(os.path.join(checkpoint, "optimizer.pt"))
        restores = OLDER_RESTORES if older else RESTORES
        restored = [what for pattern, what in restores if glob.glob(os.path.join(checkpoint, pattern))]
        missing = [what for pattern, what in restores if not glob.glob(os.path.join(checkpoint, pattern))]
        if older:
            restored[-1] += " (an earlier duda-hf's pickles, read with torch.load(weights_only=True))"
        logger.warning(
            "resuming from %s: step %d of %d; restored %s, and the log history%s",
            checkpoint,
            state.get("global_step", 0),
            state.get("max_steps", 0),
            ", ".join(restored),
            f"; not in it, so started afresh: {', '.join(missing)}" if missing else "",
        )
    return checkpoint


def download_checkpoint(value: str, announce: bool = True) -> str:
    """The local copy (in the Hugging Face cache) of a checkpoint pushed to the Hub, checked to be complete.

    Args:
        value: `ORG/NAME` (its `last-checkpoint/`), `ORG/NAME/checkpoint-N`, either with `@REVISION`.

    Raises:
        ResumeError: offline or the Hub unreachable (within about 2 s), no such repo, no checkpoint in it, or one
            that is not complete.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    from duda_hf.data.remote import hub_reachable

    match = HUB_CHECKPOINT.match(value)
    repo_id, revision = match["repo"], match["revision"]
    if not hub_reachable():
        raise ResumeError(
            f"--resume_from_checkpoint {value}: cannot download the checkpoint, the Hub is unreachable (offline or "
            "HF_HUB_OFFLINE=1). Copy the checkpoint folder to this machine and pass its path instead."
        )
    try:  # the repo's file list, from the endpoint snapshot_download reads too
        files = [sibling.rfilename for sibling in HfApi().model_info(repo_id, revision=revision or "main").siblings or []]
    except (HfHubHTTPError, OSError) as error:
        raise ResumeError(f"--resume_from_checkpoint {value}: cannot read the repo {repo_id}: {error}") from error
    folders = sorted({name.split("/", 1)[0] for name in files if "/" in name and name.endswith("/trainer_state.json")})
    folder = match["folder"] or "last-checkpoint"
    if folder not in folders:
        raise ResumeError(
            f"--resume_from_checkpoint {value}: the repo {repo_id} has no {folder}/ (checkpoints in it: "
            f"{folders or 'none'}). A run pushes its checkpoints with --push_to_hub and --hub_strategy checkpoint "
            "(last-checkpoint/) or all_checkpoints (checkpoint-N/)."
        )
    missing = [name for name in REQUIRED if f"{folder}/{name}" not in files]
    if missing:
        raise ResumeError(f"--resume_from_checkpoint {value}: {repo_id}/{folder} is not complete (missing {missing})")
    if announce:
        logger.warning("downloading %s/%s%s from the Hub", repo_id, folder, f" at {revision}" if revision else "")
    try:
        snapshot = snapshot_download(repo_id, revision=revision, allow_patterns=[f"{folder}/*"])
    except (HfHubHTTPError, OSError) as error:
        raise ResumeError(f"--resume_from_checkpoint {value}: the download of {repo_id}/{folder} failed: {error}") from error
    return os.path.join(snapshot, folder)


# Flags added on 2026-12-07 with DAFormer's behaviour as their default, and what a run trained with before them.
EARLIER_BEHAVIOUR = {
    "ema_schedule": "copy_first",
    "loss_denominator": "valid_pixels",
    "lr_schedule": "trainer",
    "weight_decay_exempt": "norms_and_biases",
    "teacher_train_mode": False,
}


def check_resume(checkpoint: str, duda, args) -> None:
    """Before a resume of `duda` with `args` from `checkpoint` goes on (every process; one line each):

    - the frozen networks rebuilt from their sources (the feature distance's ImageNet encoder, extra teachers from a
      folder or the Hub) must be those the checkpoint was trained with (`FrozenNetworkError`); a checkpoint of an
      earlier duda-hf, which holds their weights, needs no check;
    - a checkpoint written before the flags of `EARLIER_BEHAVIOUR` existed trained with their earlier behaviour:
      resumed with another, the run would change its recipe mid-way, so it stops (`ResumeError`) and names the flags.
    """
    networks = Path(checkpoint) / NETWORKS_FILE
    recorded = json.loads(networks.read_text()).get(FROZEN_SOURCES_KEY) if networks.is_file() else None
    check_frozen_networks(str(checkpoint), recorded, duda.frozen_records() if recorded is not None else {})
    saved_args = Path(checkpoint) / TRAINING_ARGS_FILE
    saved = json.loads(saved_args.read_text()) if saved_args.is_file() else {}
    changed = {flag: value for flag, value in EARLIER_BEHAVIOUR.items() if flag not in saved and getattr(args, flag) != value}
    if changed:
        flags = " ".join(f"--{flag} {str(value).lower()}" for flag, value in changed.items())
        raise ResumeError(
            f"{checkpoint} was written by a duda-hf from before 2026-12-07, which trained with {flags.replace(' --', ', --')}; "
            f"this run's defaults follow DAFormer instead (docs/method.md). Resume with `{flags}` to continue it as it "
            "was trained, or start a new run"
        )
