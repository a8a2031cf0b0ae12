"""The step's logged values (loss terms and diagnostics), summed where they live and read back once per logging step."""

from __future__ import annotations

import torch
from accelerate.utils import reduce

from duda_hf.data.labels import CITYSCAPES_CLASSES

# the classes as a logged name ends: `class_weight_traffic_light`
CLASS_KEYS = tuple(name.replace(" ", "_") for name in CITYSCAPES_CLASSES)


class StepLog:
    """Sums of the logged step values between two logging steps.

    Tensors are summed where they live (no host synchronisation per micro-step) and read back together, once,
    when the Trainer logs; host floats (such as `lam_t`) are summed on the host. A vector value `name` of 19
    entries is logged per Cityscapes class as `name_<class>`.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor | float]) -> None:
        for name, value in values.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.sums[name] = value if name not in self.sums else self.sums[name] + value
        self.count += 1

    def pop_means(self, digits: int = 5, world_size: int = 1) -> dict[str, float]:
        """Means since the last call, as host floats (one device-to-host copy), then start again.

        With several processes (every process calls it at the same logging step), tensor values are averaged over
        the processes, as Trainer's logged `loss` is, so that the logged terms add up to it.
        """
        if not self.count:
            return {}
        tensors = {name: value for name, value in self.sums.items() if isinstance(value, torch.Tensor)}
        flat = torch.cat([value.reshape(-1) for value in tensors.values()]) if tensors else None
        if flat is not None and world_size > 1:
            flat = reduce(flat, reduction="mean")
        flat = flat.cpu().tolist() if flat is not None else []
        means, offset = {}, 0
        for name, value in self.sums.items():
            if not isinstance(value, torch.Tensor):
                means[name] = round(value / self.count, digits)
                continue
            numbers = flat[offset : offset + value.numel()]
            offset += value.numel()
            if value.dim() == 0:
                means[name] = round(numbers[0] / self.count, digits)
            else:
                for class_key, number in zip(CLASS_KEYS, numbers):
                    means[f"{name}_{class_key}"] = round(number / self.count, digits)
        self.sums, self.count = {}, 0
        return means
