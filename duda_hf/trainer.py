"""`DudaTrainer`: one step of docs/method.md as `compute_loss`, the rest deferred to `transformers.Trainer`."""

from __future__ import annotations

import errno
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints

from .config import DudaConfig
from .data.labels import CITYSCAPES_CLASSES, IGNORE_INDEX, NUM_CLASSES
from .evaluation import evaluate_networks
from .hub import check_export, create_repo, upload_folder
from .jsonio import write_json
from .losses import (
    class_iou_counts,
    distillation_weight,
    feature_distance,
    fuse_teacher_probs,
    inconsistency_class_weights,
    kd_loss,
    pseudo_label,
    target_pixel_weight,
    update_class_discrepancy,
    weighted_cross_entropy,
)
from .mixing import class_mix_masks, mix, sample_augment_params, strong_augment
from .models import NETWORKS_FILE, DudaModel, prepare_networks
from .preemption import Preemption
from .resume import RunLoss

STAGING_DIR = ".partial-checkpoints"


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; training stops before the optimizer step."""


def _unwrap(model) -> DudaModel:
    return getattr(model, "module", model)


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

    def pop_means(self, digits: int = 5) -> dict[str, float]:
        """Means since the last call, as host floats (one device-to-host copy), then start again."""
        if not self.count:
            return {}
        tensors = {name: value for name, value in self.sums.items() if isinstance(value, torch.Tensor)}
        flat = torch.cat([value.reshape(-1) for value in tensors.values()]).cpu().tolist() if tensors else []
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
                for class_name, number in zip(CITYSCAPES_CLASSES, numbers):
                    means[f"{name}_{class_name.replace(' ', '_')}"] = round(number / self.count, digits)
        self.sums, self.count = {}, 0
        return means


class EmaTeacherCallback(TrainerCallback):
    """Updates the EMA teacher once per optimizer step (after it, before any checkpoint of that step)."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        duda = _unwrap(model)
        if duda.teacher is not None:
            duda.update_teacher(state.global_step - 1, args.ema_alpha)


class DebugImageCallback(TrainerCallback):
    """Every `debug_image_steps` steps, saves a picture of the step: source, target, mix, pseudo-label, prediction.

    Rows are images of the batch; the picture goes to `output_dir/debug/step_N.png` and to TensorBoard when
    it is a logger. The trainer only keeps the tensors of the steps this callback asks for.
    """

    def __init__(self, trainer: DudaTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        tensors = self.trainer.debug_tensors
        self.trainer.debug_tensors = None
        if tensors is None or not args.should_save:
            return
        from PIL import Image

        from .data.labels import colorize

        def rgb(images):
            return (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)

        columns = [rgb(tensors["source_image"]), rgb(tensors["target_image"]), rgb(tensors["mixed_image"])]
        columns += [colorize(tensors[key].cpu().numpy()) for key in ("mixed_label", "prediction")]
        grid = np.concatenate([np.concatenate(list(column), axis=0) for column in columns], axis=1)
        path = os.path.join(args.output_dir, "debug", f"step_{state.global_step}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(grid).save(path)
        for callback in self.trainer.callback_handler.callbacks:
            writer = getattr(callback, "tb_writer", None)
            if writer is not None:
                writer.add_image("debug/source_target_mix_pseudolabel_prediction", grid, state.global_step, dataformats="HWC")


class DudaTrainer(Trainer):
    """Trains a `DudaModel` with `DudaConfig` on a `DudaTrainDataset`; evaluates on a labelled target dataset.

    Args:
        model: the networks (`build_duda_model`).
        args: `DudaConfig`.
        train_dataset: `DudaTrainDataset` (paired source/target samples).
        eval_dataset: labelled target `datasets.Dataset` (`image`, `label`), scored by streaming mIoU.
        eval_resize: `(W, H)` input size for evaluation; logits are upsampled to label size.
        eval_class_subsets: extra class-subset means, e.g. `evaluation.SYNTHIA_SUBSETS` (mIoU16, mIoU13).
    """

    def __init__(
        self,
        model: DudaModel,
        args: DudaConfig,
        train_dataset=None,
        eval_dataset=None,
        eval_resize=None,
        callbacks=None,
        eval_class_subsets: dict | None = None,
        **kwargs,
    ):
        self._preemption = Preemption()  # SIGTERM / SIGINT: checkpoint at the end of the step, then stop
        callbacks = [EmaTeacherCallback(), self._preemption, RunLoss(), *(callbacks or [])]
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks, **kwargs)
        if args.debug_image_steps:
            self.add_callback(DebugImageCallback(self))
        prepare_networks(_unwrap(self.model), channels_last=args.channels_last, compile_options=args.compile_networks)
        self.eval_resize = tuple(eval_resize) if eval_resize else None
        self.eval_class_subsets = eval_class_subsets
        self.debug_tensors = None
        self.last_eval_results: dict | None = None
        self.last_eval_step = -1
        self._step_log = StepLog()
        self._micro_step = (-1, 0)

    def train(self, *args, **kwargs):
        with self._preemption:
            output = super().train(*args, **kwargs)
        if self.args.world_size > 1:
            # DDP syncs buffers from rank 0 at the start of each forward; after the last one every process has
            # updated its own BatchNorm statistics. Make them identical, as the next forward would.
            for buffer in _unwrap(self.model).buffers():
                torch.distributed.broadcast(buffer, src=0)
        self._preemption.raise_if_stopped(self.state, self.args.output_dir)
        return output._replace(training_loss=output.metrics["train_loss"])  # the whole run's (`log`)

    # ---- data ----
    def _get_train_sampler(self, train_dataset=None):
        # Sample i is a pure function of (seed, i): sequential indices make the data a function of the step.
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def get_train_dataloader(self):
        args = self.args
        # One epoch = the whole run, so no sample index is ever drawn twice.
        self.train_dataset.num_samples = args.max_steps * self._train_batch_size * args.gradient_accumulation_steps * args.world_size
        return super().get_train_dataloader()

    # ---- optimisation ----
    def create_optimizer(self, model=None):
        """AdamW over the trained networks: decode heads at `head_lr_multiplier` x lr; no weight decay on norms and biases."""
        if self.optimizer is None:
            args = self.args
            groups = defaultdict(list)
            for name, param in _unwrap(model or self.model).named_parameters():
                if not param.requires_grad:
                    continue
                is_head = ".decode_head." in f".{name}"
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
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, self.model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(param_groups, lr=args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    # ---- one step (docs/method.md) ----
    def _step_generator(self, device: torch.device) -> torch.Generator:
        """Random source for this micro-step: a function of (seed, step, micro-step, process), so resumes are exact."""
        step = self.state.global_step
        last_step, micro = self._micro_step
        self._micro_step = (step, micro + 1 if last_step == step else 0)
        seed = np.random.SeedSequence([self.args.seed, step, self._micro_step[1], self.args.process_index]).generate_state(1)[0]
        return torch.Generator(device=device).manual_seed(int(seed))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One micro-step: the loss to optimise. Named loss terms and diagnostics are kept for the log.

        Precision: the networks' forward passes run under the run's autocast (`--bf16`/`--fp16`); everything after
        them (teacher softmax, pseudo-labels, confidence, KD targets, losses) is computed in fp32.
        Host synchronisation: one per micro-step, the finiteness check of the loss terms, which stops the run
        before a non-finite loss reaches the optimizer. Logged values stay on the device and are read once per
        logging step.
        """
        args: DudaConfig = self.args
        duda = _unwrap(model)
        source_image = inputs["source_image"].float() / 255
        source_label = inputs["source_label"].long()
        target_image = inputs["target_image"].float() / 255
        if args.method == "source_only":
            with self.accelerator.autocast():
                outputs = model(source_image)
            losses = {"loss_student_source": weighted_cross_entropy(outputs["student_logits"], source_label)}
            loss, diagnostics = losses["loss_student_source"], {}
        else:
            loss, losses, diagnostics, outputs = self._adaptation_loss(model, duda, source_image, source_label, target_image)
        self._check_finite({**losses, "loss": loss})
        self._step_log.add({**losses, **diagnostics})
        return (loss, outputs) if return_outputs else loss

    def _adaptation_loss(self, model, duda: DudaModel, source_image, source_label, target_image):
        args: DudaConfig = self.args
        generator = self._step_generator(source_image.device)
        batch, label_size = source_image.shape[0], source_label.shape[-2:]
        step = self.state.global_step

        # 1. Pseudo-labels from the (fused) teachers on the clean target images (softmax and labels in fp32).
        with self.accelerator.autocast():
            teacher_logits = duda.teacher_logits(target_image)
        probs, probs_tau = fuse_teacher_probs(teacher_logits, args.teacher_weights or None, args.kd_temperature, size=label_size)
        pseudo, quality = pseudo_label(probs, args.pseudo_label_threshold)
        # 1 outside the ignore margins, 0 in them; scaled by the quality weight for the loss
        inside = target_pixel_weight(
            torch.ones((), device=pseudo.device), pseudo.shape, args.pseudo_label_ignore_top, args.pseudo_label_ignore_bottom
        )
        target_weight = quality * inside

        # 2. ClassMix and strong augmentation.
        if args.class_mix:
            mask = class_mix_masks(source_label, generator)
        else:
            mask = torch.zeros_like(source_label, dtype=torch.float32)
        mixed_image = mix(mask, source_image, target_image)
        mixed_label = mix(mask, source_label, pseudo)
        mixed_weight = mix(mask, torch.ones_like(target_weight), target_weight)
        params = sample_augment_params(
            batch,
            generator,
            source_image.device,
            jitter_strength=args.color_jitter_strength,
            jitter_p=args.color_jitter_p,
            blur_p=args.blur_p,
            blur_sigma=(args.blur_sigma_min, args.blur_sigma_max),
        )
        mixed_image = strong_augment(mixed_image, params)

        # Source and mixed batches through one forward pass of each trained network.
        use_fd = duda.imagenet_encoder is not None and args.fd_lambda > 0
        with self.accelerator.autocast():
            outputs = model(torch.cat([source_image, mixed_image]), output_features=use_fd)
            reference_features = duda.imagenet_features(source_image) if use_fd else None
        student_source, student_mix = outputs["student_logits"].split(batch)

        losses = {"loss_student_source": weighted_cross_entropy(student_source, source_label)}
        diagnostics = {"pseudo_label_quality": quality}
        if duda.aux_student is None:  # self-training: the student learns like DAFormer's network
            losses["loss_student_mix"] = weighted_cross_entropy(student_mix, mixed_label, mixed_weight)
            loss = losses["loss_student_source"] + losses["loss_student_mix"]
        else:
            # 3. Auxiliary student (DAFormer recipe).
            aux_source, aux_mix = outputs["aux_logits"].split(batch)
            losses["loss_aux_source"] = weighted_cross_entropy(aux_source, source_label)
            losses["loss_aux_mix"] = weighted_cross_entropy(aux_mix, mixed_label, mixed_weight)
            # 4. Student: hard pseudo-labels, then more and more the teacher's soft output, class-weighted.
            lam = distillation_weight(step, args.preadapt_steps_resolved, args.distill_ramp_steps_resolved)
            target_pixels = mask == 0
            class_weights = inconsistency_class_weights(duda.class_discrepancy, duda.class_seen, args.inconsistency_beta)
            pixel_weight = mixed_weight * torch.where(target_pixels, class_weights[mixed_label.clamp(max=NUM_CLASSES - 1)], 1.0)
            loss = losses["loss_aux_source"] + losses["loss_aux_mix"] + losses["loss_student_source"]
            if lam < 1:
                losses["loss_student_mix"] = weighted_cross_entropy(student_mix, mixed_label, pixel_weight)
                loss = loss + (1 - lam) * losses["loss_student_mix"]
            if lam > 0:
                source_onehot = F.one_hot(source_label.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2).float()
                soft_target = mix(mask, source_onehot, probs_tau)
                valid = mixed_label != IGNORE_INDEX
                losses["loss_student_kd"] = kd_loss(student_mix, soft_target, args.kd_temperature, pixel_weight, valid)
                loss = loss + lam * losses["loss_student_kd"]
            # Discrepancy on every pseudo-labelled pixel outside the margins, even while the quality weight is ~0.
            self._update_inconsistency(duda, student_mix, mixed_label, target_pixels & (inside > 0))
            diagnostics["lam_t"] = lam  # a host float: logged as is
            diagnostics["class_weight"] = class_weights
        # 6. Optional ImageNet feature distance on the network that makes the pseudo-labels.
        if use_fd:
            losses["loss_feature_distance"] = feature_distance(
                outputs["features"][:batch],
                reference_features,
                source_label,
                tuple(args.fd_classes),
                scale_min_ratio=args.fd_scale_min_ratio,
            )
            loss = loss + args.fd_lambda * losses["loss_feature_distance"]
        if args.debug_image_steps and (step + 1) % args.debug_image_steps == 0:
            self.debug_tensors = {
                "source_image": source_image.detach(),
                "target_image": target_image.detach(),
                "mixed_image": mixed_image.detach(),
                "mixed_label": mixed_label.detach(),
                "prediction": F.interpolate(student_mix.detach().float(), size=label_size, mode="bilinear").argmax(1),
            }
        return loss, losses, diagnostics, outputs

    @torch.no_grad()
    def _update_inconsistency(self, duda: DudaModel, student_mix, mixed_label, valid):
        """Running per-class discrepancy between the student and the pseudo-labels (summed over processes)."""
        if self.args.inconsistency_beta == 0:
            return
        prediction = F.interpolate(student_mix.float(), size=mixed_label.shape[-2:], mode="bilinear").argmax(1)
        counts = torch.stack(class_iou_counts(prediction, mixed_label, valid, NUM_CLASSES))
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        discrepancy, seen = update_class_discrepancy(
            duda.class_discrepancy, duda.class_seen, counts[0], counts[1], self.args.inconsistency_momentum
        )
        duda.class_discrepancy.copy_(discrepancy)
        duda.class_seen.copy_(seen)

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        """Stop before the optimizer step if a loss term is NaN or infinite (the step's one host synchronisation)."""
        values = torch.stack([value.detach().float().reshape(()) for value in losses.values()])
        finite = torch.isfinite(values)
        if bool(finite.all()):
            return
        name, value = next((name, v) for (name, v), ok in zip(losses.items(), finite.tolist()) if not ok)
        last = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        raise NonFiniteLossError(
            f"non-finite loss at step {self.state.global_step + 1}: term '{name}' is {value.detach().float().item()}. "
            f"Last good checkpoint: {last or 'none (no checkpoint was saved yet)'}. Lower --learning_rate, enable "
            "--max_grad_norm, or check the inputs, then resume with --resume_from_checkpoint."
        )

    # ---- logging ----
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self._step_log.pop_means())
        if "train_loss" in logs:  # the end of `train`: the mean over the whole run, also after a resume
            logs["train_loss"] = self._run_loss().train_loss(self._total_loss_scalar, self.state.global_step, self._initial_global_step)
        super().log(logs, start_time)

    def _run_loss(self) -> RunLoss:
        return next(callback for callback in self.callback_handler.callbacks if isinstance(callback, RunLoss))

    # ---- checkpoints: written in a staging folder, then renamed (atomic for readers) ----
    def _save_checkpoint(self, model, trial):
        self._run_loss().record(self._total_loss_scalar + self._tr_loss.item(), self.state.global_step)
        run_dir = self._get_output_dir(trial=trial)
        name = f"checkpoint-{self.state.global_step}"
        staging = os.path.join(run_dir, STAGING_DIR)
        if self.args.should_save and os.path.isdir(os.path.join(staging, name)):
            shutil.rmtree(os.path.join(staging, name))  # debris of an interrupted save
        self.accelerator.wait_for_everyone()
        # Trainer writes to _get_output_dir()/checkpoint-N; point it at the staging folder for this save.
        self._get_output_dir = lambda trial: staging
        try:
            super()._save_checkpoint(model, trial)
        except OSError as error:
            if error.errno == errno.ENOSPC:
                last = get_last_checkpoint(run_dir) if os.path.isdir(run_dir) else None
                raise OSError(
                    errno.ENOSPC,
                    f"disk full while writing {name}; the partial copy stays in {staging} and is not used. "
                    f"Last complete checkpoint: {last or 'none'}. Free space (or raise --save_total_limit pruning) "
                    "and resume with --resume_from_checkpoint.",
                ) from error
            raise
        finally:
            del self._get_output_dir  # back to the class method
        if self.args.should_save:  # what each network is, so that `--student CHECKPOINT@role` can rebuild one
            write_json(os.path.join(staging, name, NETWORKS_FILE), _unwrap(model).network_configs())
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staging):
                self.state.best_model_checkpoint = final
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()

    # ---- the Hub: the repo root holds the deployable student (plain SegFormer); checkpoints live in subfolders ----

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Create `hub_model_id` (default: the output folder's name) with a clear error offline / without a token."""
        if not self.is_world_process_zero():
            return
        repo_id = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        token = token if token is not None else self.args.hub_token
        private = bool(private if private is not None else self.args.hub_private_repo)
        self.hub_model_id = create_repo(repo_id, private, self.args.hub_revision, token, local=self.args.output_dir)
        self.push_in_progress = None

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Push a checkpoint to `last-checkpoint/` (hub_strategy checkpoint) or `checkpoint-N/` (all_checkpoints).

        Unlike `Trainer`, never to the repo root: the root keeps the student that `from_pretrained(repo_id)` loads,
        not the training container of every network. `every_save` pushes to `last-checkpoint/` too.
        """
        if not self.is_world_process_zero() or self.args.hub_strategy == "end":
            return
        path_in_repo = Path(checkpoint_folder).name if self.args.hub_strategy == "all_checkpoints" else "last-checkpoint"
        upload_folder(
            checkpoint_folder,
            self.hub_model_id,
            f"Training in progress, step {self.state.global_step}, checkpoint",
            path_in_repo=path_in_repo,
            revision=self.args.hub_revision,
            token=self.args.hub_token,
        )

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ) -> str | None:
        """Push `output_dir/student/` (the exported student with its model card) to the repo root."""
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        if not self.is_world_process_zero():
            return None
        return upload_folder(
            check_export(Path(self.args.output_dir) / "student"),
            self.hub_model_id,
            commit_message or "End of training",
            revision=revision or self.args.hub_revision,
            token=token if token is not None else self.args.hub_token,
        )

    # ---- evaluation: streaming confusion matrices, no logits kept ----
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Target-validation mIoU of the student, the auxiliary student (`duda`) and the EMA teacher.

        Logs `eval_student_mIoU`, `eval_auxiliary_mIoU` and `eval_teacher_mIoU`, so that every evaluation shows
        whether the teacher is stronger than the student it teaches (DUDA's premise).
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        duda = _unwrap(self.model)
        networks = {"student": duda.student}
        if duda.aux_student is not None:
            networks["auxiliary"] = duda.aux_student
        if duda.teacher is not None:
            networks["teacher"] = duda.teacher
        was_training = duda.training
        duda.eval()
        use_autocast = self.args.device.type == "cuda" and (self.args.bf16 or self.args.fp16)
        matrices = evaluate_networks(
            networks,
            dataset,
            self.args.device,
            input_size=tuple(reversed(self.eval_resize)) if self.eval_resize else None,
            autocast_dtype=(torch.bfloat16 if self.args.bf16 else torch.float16) if use_autocast else None,
            process_index=self.args.process_index,
            world_size=self.args.world_size,
        )
        duda.train(was_training)
        results = {}
        metrics = {}
        for name, matrix in matrices.items():
            results[name] = matrix.compute(class_subsets=self.eval_class_subsets)
            results[name]["num_images"] = len(dataset)
            metrics[f"{metric_key_prefix}_{name}_mIoU"] = round(100 * results[name]["mIoU"], 2)
        self.last_eval_results = results
        self.last_eval_step = self.state.global_step
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
