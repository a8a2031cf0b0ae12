"""The Hub: create a repo and upload folders, with errors that say the cause and the fix.

An upload blocks by default; `upload_folder(..., blocking=False)` runs it in this module's one background thread (uploads
queued there run one after the other, and the interpreter waits for them before it exits) and returns its `Future`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from huggingface_hub import HfApi


class HubError(RuntimeError):
    """A push that could not happen, with the cause and what to do; local files are untouched."""


def check_export(model_dir: str | os.PathLike) -> Path:
    """The folder, if it is a safetensors SegFormer export; HubError otherwise."""
    folder = Path(model_dir)
    missing = [name for name in ("config.json", "model.safetensors") if not (folder / name).is_file()]
    if missing:
        raise HubError(f"'{folder}' is not an exported model (missing {missing}); push the run's student/ folder")
    pickles = sorted(p.name for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
    if pickles:
        raise HubError(f"'{folder}' holds pickle files {pickles}; only safetensors exports are pushed")
    return folder


@contextlib.contextmanager
def hub_errors(repo_id: str, local: str | os.PathLike):
    """Turn huggingface_hub failures into a HubError naming the cause, the fix, and that `local` is untouched."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    where = f"The local files in '{local}' are unchanged."
    try:
        yield
    except OfflineModeIsEnabled as error:
        raise HubError(
            f"cannot push to '{repo_id}': offline mode is on (HF_HUB_OFFLINE=1). Unset it where there is network. {where}"
        ) from error
    except LocalTokenNotFoundError as error:
        raise HubError(f"cannot push to '{repo_id}': no Hugging Face token. Run `hf auth login` or set HF_TOKEN. {where}") from error
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        cause = {
            401: "the token is invalid or expired",
            403: "the token may not write to this repo or organisation",
            404: "the repo or organisation does not exist",
        }.get(status, f"the server refused it ({status})")
        raise HubError(f"cannot push to '{repo_id}': {cause}: {_one_line(error)}. {where}") from error
    except OSError as error:  # connection errors (requests / httpx raise OSError subclasses)
        raise HubError(
            f"cannot push to '{repo_id}': the Hub is unreachable ({type(error).__name__}: {_one_line(error)}). {where}"
        ) from error


def _one_line(error: BaseException) -> str:
    """The error's text on one line (the server's message comes after a blank line in huggingface_hub's errors)."""
    return " ".join(str(error).split())


def create_repo(repo_id: str, *, private: bool = False, revision: str | None = None, token: str | None = None, local: str = ".") -> str:
    """Create the model repo (and branch) if missing; returns the repo id. HubError on failure."""
    api = HfApi(token=token)
    with hub_errors(repo_id, local):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
    return repo_id


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    commit_message: str,
    *,
    path_in_repo: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    delete_patterns: str | None = None,
    local: str | os.PathLike | None = None,
    blocking: bool = True,
) -> str | Future[str]:
    """Upload `folder` (to `path_in_repo`) in one commit; returns the commit URL. HubError on failure.

    `delete_patterns`: files under `path_in_repo` to delete in the same commit unless uploaded (`"*"`: make the
    repo folder hold exactly `folder`). `local`: the folder the error message names as untouched (default `folder`;
    a snapshot uploaded in its place names the original). `blocking=False`: the upload runs in the background
    (`background_upload`) and the call returns its `Future`, whose result is the commit URL or whose exception is the
    HubError."""
    if not blocking:
        arguments = {"path_in_repo": path_in_repo, "revision": revision, "token": token, "delete_patterns": delete_patterns}
        return background_upload(upload_folder, folder, repo_id, commit_message, **arguments, local=local)
    extra = {"delete_patterns": delete_patterns} if delete_patterns else {}
    with hub_errors(repo_id, local if local is not None else folder):
        info = HfApi(token=token).upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            path_in_repo=path_in_repo,
            revision=revision,
            repo_type="model",
            commit_message=commit_message,
            **extra,
        )
    return str(getattr(info, "commit_url", info))


_background: ThreadPoolExecutor | None = None
_background_lock = threading.Lock()


def background_upload(function, *args, **kwargs) -> Future:
    """`function(*args, **kwargs)` in this module's background thread, after the uploads queued before it; its Future.

    One thread, so that the commits of one process reach a repo in the order they were asked for. Its thread is not a
    daemon: a program that ends while an upload runs waits for it (concurrent.futures joins its threads at exit)."""
    global _background
    with _background_lock:
        if _background is None:
            _background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duda-hub-upload")
        return _background.submit(function, *args, **kwargs)


def push_folder(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Create the repo if needed and upload the export `model_dir` to its root in one commit; returns the commit URL.

    Raises:
        HubError: offline, no token, refused by the server, or a folder that is not an export; names the cause.
    """
    folder = check_export(model_dir)
    create_repo(repo_id, private=private, revision=revision, token=token, local=str(folder))
    return upload_folder(folder, repo_id, commit_message or f"Upload DUDA student from {folder.name}", revision=revision, token=token)
