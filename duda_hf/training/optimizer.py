"""The optimizer of a run: each trained network's head at `head_lr_multiplier` x lr, in any model family."""

from __future__ import annotations

from collections import defaultdict

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import Trainer

from duda_hf.method.config import DudaConfig
from duda_hf.networks.duda_model import DudaModel, head_parameters


def build_optimizer(model: DudaModel, args: DudaConfig, optimizer_cls_and_kwargs: tuple | None = None) -> torch.optim.Optimizer:
    """AdamW (or `--optim`, or `optimizer_cls_and_kwargs` as Trainer takes it) over the trained networks: each network's head (every parameter outside its backbone, in
    any model family: `networks.duda_model.head_parameters`) at `head_lr_multiplier` x lr; no weight decay on norms
    and biases. `DudaTrainer` passes it to Trainer as `optimizers=(optimizer, None)`."""
    duda = extract_model_from_parallel(model)
    heads = {id(param) for network in (duda.student, duda.aux_student) if network is not None for param in head_parameters(network)}
    groups = defaultdict(list)
    for param in duda.parameters():
        if param.requires_grad:
            groups[(id(param) in heads, param.ndim <= 1)].append(param)  # (head, no decay: biases and norm scales)
    param_groups = [
        {
            "params": params,
            "lr": args.learning_rate * (args.head_lr_multiplier if is_head else 1.0),
            "weight_decay": 0.0 if no_decay else args.weight_decay,
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]
    optimizer_cls, optimizer_kwargs = optimizer_cls_and_kwargs or Trainer.get_optimizer_cls_and_kwargs(args, duda)
    optimizer_kwargs = {key: value for key, value in optimizer_kwargs.items() if key != "lr"}
    return optimizer_cls(param_groups, lr=args.learning_rate, **optimizer_kwargs)
