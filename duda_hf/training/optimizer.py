"""The optimizer and learning-rate schedule of a run: each trained network's head at `head_lr_multiplier` x lr, in any
model family, weight decay and schedule as DAFormer's mmcv sets them (or as the earlier duda-hf did, by flag)."""

from __future__ import annotations

import functools
from collections import defaultdict

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import Trainer

from duda_hf.method.config import DudaConfig
from duda_hf.networks.duda_model import DudaModel, head_parameters


def build_optimizer(model: DudaModel, args: DudaConfig, optimizer_cls_and_kwargs: tuple | None = None) -> torch.optim.Optimizer:
    """AdamW (or `--optim`, or `optimizer_cls_and_kwargs` as Trainer takes it) over the trained networks: each network's
    head (every parameter outside its backbone, in any model family: `networks.duda_model.head_parameters`) at
    `head_lr_multiplier` x lr; `DudaTrainer` passes it to Trainer as `optimizers=(optimizer, schedule)`.

    Weight decay (`--weight_decay_exempt`): 'encoder_norms' exempts the encoder parameters whose name holds `norm`
    (DAFormer's mmcv `paramwise_cfg`: custom keys `head` (lr_mult 10) and `norm` (decay_mult 0), the longer and then
    alphabetically first key matching a name winning, so a head's norm still decays); 'norms_and_biases' exempts every
    one-dimensional parameter."""
    duda = extract_model_from_parallel(model)
    heads = {id(param) for network in (duda.student, duda.aux_student) if network is not None for param in head_parameters(network)}
    groups = defaultdict(list)
    for name, param in duda.named_parameters():
        if param.requires_grad:
            is_head = id(param) in heads
            if args.weight_decay_exempt == "encoder_norms":
                no_decay = not is_head and "norm" in name
            else:
                no_decay = param.ndim <= 1  # biases and norm scales
            groups[(is_head, no_decay)].append(param)
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


def daformer_poly(step: int, *, max_steps: int, warmup_steps: int, power: float = 1.0, warmup_ratio: float = 1e-6) -> float:
    """mmcv's `PolyLrUpdaterHook` with linear warmup as DAFormer configures it (power 1, min_lr 0, warmup_ratio 1e-6),
    as the factor of each group's base rate at optimizer step `step` (0-based, the iteration mmcv sets the rate for):

        (1 - t / max_steps) ** power * (1 - (1 - t / warmup_steps) * (1 - warmup_ratio))    for t < warmup_steps
        (1 - t / max_steps) ** power                                                           afterwards
    """
    factor = max(0.0, 1 - step / max_steps) ** power
    if step < warmup_steps:
        factor *= 1 - (1 - step / warmup_steps) * (1 - warmup_ratio)
    return factor


def build_schedule(optimizer: torch.optim.Optimizer, args: DudaConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """DAFormer's schedule (`daformer_poly`) with `--lr_schedule daformer`; None with 'trainer' (Trainer makes its own
    from `--lr_scheduler_type` and `--warmup_steps`). Its settings are the run's arguments, also after a resume (a
    `partial`, which `LambdaLR.state_dict` saves without them, as Trainer's own schedules): a resumed run with another
    `--max_steps` follows it from the step it resumes at."""
    if args.lr_schedule != "daformer":
        return None
    warmup = args.get_warmup_steps(args.max_steps)  # a fraction below 1 of max_steps, as Trainer reads it
    factor = functools.partial(daformer_poly, max_steps=args.max_steps, warmup_steps=warmup, power=args.poly_power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
