"""What `DudaTrainer` pushes to the Hub, and where: the repo root holds the deployable student, checkpoints live in subfolders.

`Trainer` pushes the output folder to the repo root at every save and at the end. Here the root keeps the
exported student (`output_dir/student/`, a plain SegFormer with its model card), so that
`from_pretrained(repo_id)` always loads the model to deploy, not the training container of every network:

| `--hub_strategy` | at each save | at the end (`push_to_hub`) |
|---|---|---|
| `end` | nothing | the student to the root |
| `every_save`, `checkpoint` | the checkpoint to `last-checkpoint/` | the student to the root |
| `all_checkpoints` | the checkpoint to `checkpoint-N/` | the student to the root |

Pushes go through `duda_hf.export.hub`, whose errors (offline, no token, refused) say the cause and the fix. Only the
main process pushes.
"""

from __future__ import annotations

from pathlib import Path

from duda_hf.export.hub import check_export, create_repo, upload_folder


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


def push_checkpoint(args, repo_id: str, checkpoint_folder: str, step: int) -> None:
    """Upload a checkpoint folder where `checkpoint_path_in_repo` says (nothing for `hub_strategy` end)."""
    path_in_repo = checkpoint_path_in_repo(args.hub_strategy, checkpoint_folder)
    if path_in_repo is None:
        return
    upload_folder(
        checkpoint_folder,
        repo_id,
        f"Training in progress, step {step}, checkpoint",
        path_in_repo=path_in_repo,
        revision=args.hub_revision,
        token=args.hub_token,
        # last-checkpoint/ holds exactly the checkpoint pushed: no file of an earlier one (or format) stays beside it
        delete_patterns="*",
    )


def push_student(args, repo_id: str, commit_message: str | None, revision: str | None = None, token: str | None = None) -> str:
    """Upload `output_dir/student/` (checked to be a complete export) to the repo root; returns the commit URL."""
    return upload_folder(
        check_export(Path(args.output_dir) / "student"),
        repo_id,
        commit_message or "End of training",
        revision=revision or args.hub_revision,
        token=token if token is not None else args.hub_token,
    )
