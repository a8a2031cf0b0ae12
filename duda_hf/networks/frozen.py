"""The frozen networks of a run that checkpoints leave out: each is rebuilt from its source at resume and checked.

The ImageNet encoder of the feature distance (a copy of `nvidia/mit-bN`) and the extra teachers loaded from a
folder or a Hub id never change during training: each is a function of its source. A checkpoint
keeps none of their weights in `model.safetensors` (for MiT-B5 -> B0, the encoder alone would be 311 MiB of every
checkpoint and every push); its `networks.json` records, under `frozen_sources`, where each comes from (the name the
run was given, the Hub revision where there is one) and a SHA-256 of its weights. At resume the run builds them again
from the same flags (offline, from the Hugging Face cache or the folder), and `check_frozen_networks` refuses in one
line a network whose weights are not those the checkpoint was trained with. A frozen network that is not a function
of a lasting source (a preset built at random, or a `CHECKPOINT@role`, which its run's `--save_total_limit` may
delete) stays in `model.safetensors`, as every frozen network did before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

FROZEN_SOURCES_KEY = "frozen_sources"  # in networks.json


def role_prefix(role: str) -> str:
    """The state-dict prefix of a `DudaModel` network by its role in `networks.json` (`extra_teacher_N` ->
    `extra_teachers.N.`, any other role -> `role.`)."""
    return f"extra_teachers.{role.rsplit('_', 1)[1]}." if role.startswith("extra_teacher_") else f"{role}."


class FrozenNetworkError(ValueError):
    """A frozen network rebuilt at resume that is not the one the checkpoint was trained with."""


def weights_sha256(network: nn.Module) -> str:
    """SHA-256 of a network's state dict: every tensor's name, dtype, shape and bytes, in name order (the memory
    layout, e.g. channels_last, does not count)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def hub_revision(source: str) -> str | None:
    """The commit of the Hub repo `source` in the local cache (what a load reads offline); None for a local folder,
    a `CHECKPOINT@role`, or a repo not cached."""
    if "@" in source or Path(source).exists():
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "config.json")
    except ValueError:  # not a repo id
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None


def frozen_record(network: nn.Module, source: str) -> dict:
    """What `networks.json` says of a frozen network: its source, the Hub revision it was loaded at (None for a
    folder or a checkpoint) and the SHA-256 of its weights."""
    return {"source": source, "revision": hub_revision(source), "weights_sha256": weights_sha256(network)}


def check_frozen_networks(checkpoint: str, recorded: dict | None, current: dict) -> None:
    """Refuse (one line) a resume whose rebuilt frozen networks differ from those `checkpoint` was trained with.

    Args:
        recorded: `networks.json`'s `frozen_sources` (role -> `frozen_record`; {} when the checkpoint's run had none
            left out); None for a checkpoint of an earlier duda-hf, which holds them all and needs no check.
        current: the same for the networks built now.

    Raises:
        FrozenNetworkError: a role is missing or new, or its weights' SHA-256 differs.
    """
    if recorded is None:
        return
    if set(recorded) != set(current):
        raise FrozenNetworkError(
            f"{checkpoint} was trained with the frozen networks {_named(recorded)} but this run builds {_named(current)}; "
            "resume with the run's own --teacher or --extra_teachers, --fd_lambda and --init"
        )
    for role, record in recorded.items():
        now = current[role]
        if now["weights_sha256"] != record["weights_sha256"]:
            at = f" at revision {record['revision']}" if record.get("revision") else ""
            built = f" (revision {now['revision']})" if now.get("revision") else ""
            restore = (
                f"`hf download {record['source']} --revision {record['revision']}`"
                if record.get("revision")
                else f"{record['source']} as it was"
            )
            raise FrozenNetworkError(
                f"{checkpoint}: the {role} rebuilt from {now['source']}{built} is not the one the run was trained with "
                f"({record['source']}{at}, weights sha256 {record['weights_sha256'][:12]}..., now {now['weights_sha256'][:12]}...); "
                f"restore its weights ({restore}) before resuming"
            )


def _named(records: dict) -> str:
    return ", ".join(f"{role} ({record['source']})" for role, record in sorted(records.items())) or "none"
