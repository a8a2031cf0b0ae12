"""The training state of a checkpoint as safetensors and JSON: no pickle is written or read.

Trainer keeps the optimizer, the learning-rate schedule, the gradient scaler and the random state as pickles
(`optimizer.pt`, `scheduler.pt`, `scaler.pt`, `rng_state*.pth`). A duda-hf checkpoint holds them as:

| file | what |
|---|---|
| `optimizer.safetensors` + `optimizer.json` | the optimizer's per-parameter tensors; its parameter groups (learning rate, betas, weight decay, ...) and any non-tensor state |
| `scheduler.json` | the learning-rate schedule's state |
| `scaler.json` | the gradient scaler's state (`--fp16` only) |
| `rng_state.safetensors` + `rng_state.json` | the random state of Python, NumPy and torch (CPU, CUDA); `rng_state_<rank>.*` per process with several |

A checkpoint written by an earlier duda-hf (the pickles above) still resumes: `DudaTrainer` hands it to Trainer's own
loading, which reads those files with `torch.load(weights_only=True)` (tensors and plain containers only, no code).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def write_exact_json(path: str | os.PathLike, value) -> None:
    """Python's JSON with its `Infinity` and `NaN`: a training state must read back exactly (the project's strict
    writer, for files people read, turns them into null)."""
    Path(path).write_text(json.dumps(value, indent=1))


OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
SCHEDULER_JSON = "scheduler.json"
SCALER_JSON = "scaler.json"
FILES = (OPTIMIZER_TENSORS, OPTIMIZER_JSON, SCHEDULER_JSON)  # what a checkpoint with a training state always has


def has_training_state(folder: str | os.PathLike) -> bool:
    """Whether a checkpoint holds its training state in this module's files (else: an older, pickled one)."""
    return all(Path(folder, name).is_file() for name in FILES)


def rng_files(process_index: int, world_size: int) -> tuple[str, str]:
    stem = "rng_state" if world_size <= 1 else f"rng_state_{process_index}"
    return f"{stem}.safetensors", f"{stem}.json"


# ---- the optimizer ----
def save_optimizer(optimizer: torch.optim.Optimizer, folder: str | os.PathLike) -> None:
    """Per-parameter state tensors to `optimizer.safetensors` (`state.<index>.<name>`), the rest to `optimizer.json`."""
    state_dict = optimizer.state_dict()
    tensors, values = {}, {}
    for index, state in state_dict["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                values.setdefault(str(index), {})[name] = value
    save_file(tensors, os.path.join(folder, OPTIMIZER_TENSORS), metadata={"format": "pt"})
    write_exact_json(os.path.join(folder, OPTIMIZER_JSON), {"param_groups": state_dict["param_groups"], "state_values": values})


def optimizer_state_dict(folder: str | os.PathLike) -> dict:
    """What `save_optimizer` wrote, as `Optimizer.state_dict()` returns it (tensors on the CPU; lists for tuples)."""
    saved = json.loads(Path(folder, OPTIMIZER_JSON).read_text())
    state: dict[int, dict] = {}
    for key, tensor in load_file(os.path.join(folder, OPTIMIZER_TENSORS)).items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in saved["state_values"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": saved["param_groups"]}


def load_optimizer(optimizer: torch.optim.Optimizer, folder: str | os.PathLike) -> None:
    """The inverse of `save_optimizer`; tensors are read to the CPU and moved by `load_state_dict` as torch does."""
    saved = optimizer_state_dict(folder)
    # JSON has no tuples: give back the type the optimizer's own groups have (e.g. Adam's betas)
    current = optimizer.state_dict()["param_groups"]
    if len(current) != len(saved["param_groups"]):
        raise ValueError(
            f"the checkpoint's optimizer {folder} has {len(saved['param_groups'])} parameter groups, this run's has "
            f"{len(current)}: it was written for other networks or another --weight_decay / --weight_decay_exempt / head "
            "learning rate layout"
        )
    groups = [
        {key: tuple(value) if isinstance(own.get(key), tuple) else value for key, value in group.items()}
        for group, own in zip(saved["param_groups"], current)
    ]
    optimizer.load_state_dict({"state": saved["state"], "param_groups": groups})


# ---- the schedule and the scaler: plain numbers ----
def save_json_state(stateful, path: str | os.PathLike) -> None:
    write_exact_json(path, stateful.state_dict())


def load_json_state(stateful, path: str | os.PathLike) -> None:
    stateful.load_state_dict(json.loads(Path(path).read_text()))


# ---- the random state of this process ----
def save_random_state(folder: str | os.PathLike, process_index: int, world_size: int) -> None:
    """Python's and NumPy's generators to JSON, torch's (CPU and every CUDA device) to safetensors."""
    tensors_file, json_file = rng_files(process_index, world_size)
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    tensors = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.random.get_rng_state_all())})
    save_file(tensors, os.path.join(folder, tensors_file))
    write_exact_json(
        os.path.join(folder, json_file),
        {
            "python": {"version": version, "state": list(mt_state), "gauss_next": gauss},
            "numpy": {"kind": kind, "keys": keys.tolist(), "pos": position, "has_gauss": has_gauss, "cached_gaussian": cached},
        },
    )


def random_state(folder: str | os.PathLike, process_index: int, world_size: int) -> dict | None:
    """What `save_random_state` wrote for this process, in the generators' own forms; None when there is none."""
    tensors_file, json_file = rng_files(process_index, world_size)
    if not Path(folder, tensors_file).is_file():
        return None
    saved = json.loads(Path(folder, json_file).read_text())
    python, numpy = saved["python"], saved["numpy"]
    keys = np.asarray(numpy["keys"], dtype=np.uint32)
    tensors = load_file(os.path.join(folder, tensors_file))
    return {
        "python": (python["version"], tuple(python["state"]), python["gauss_next"]),
        "numpy": (numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]),
        "cpu": tensors["cpu"],
        "cuda": [tensors[f"cuda.{i}"] for i in range(len(tensors) - 1)],
    }


def load_random_state(folder: str | os.PathLike, process_index: int, world_size: int) -> bool:
    """Restore what `save_random_state` wrote for this process; False when the checkpoint has none for it."""
    states = random_state(folder, process_index, world_size)
    if states is None:
        return False
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.random.set_rng_state_all(states["cuda"][: torch.cuda.device_count()])
    return True
