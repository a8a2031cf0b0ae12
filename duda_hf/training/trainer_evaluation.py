"""`StreamingEvaluation`: `DudaTrainer.evaluate`, the target-validation mIoU of every network a run trains or learns from.

Streaming confusion matrices, no logits kept: the student, the auxiliary student and the teacher are scored at once
over this process's stride of the dataset (`duda_hf.evaluation.inference.evaluate_networks`), with Trainer's
DataLoader settings. A mixin of `DudaTrainer`, before `transformers.Trainer` among its bases so that its `evaluate`
overrides Trainer's (the override is listed in duda_hf/training/trainer_internals.py). It reads the trainer's `args`,
`accelerator`, `state`, `model`, `eval_dataset`, `eval_size_hw` and `eval_class_subsets`, and writes
`per_class_history`, `last_eval_results`, `last_eval_step` and `_kept_evaluation_loader`, all set in
`DudaTrainer.__init__`.
"""

from __future__ import annotations

import torch

from duda_hf.evaluation.inference import evaluate_networks, evaluation_loader
from duda_hf.training.trackers import per_class_logs, send_to_trackers


class StreamingEvaluation:
    """`evaluate` for `DudaTrainer`: every network scored in one pass over the data, per-class results kept, no logits."""

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Target-validation mIoU of the student, the auxiliary student (`duda`) and the EMA teacher (for `distill`, the
        frozen teachers: `teacher` the first, `teacher_1`, ... the others).

        Logs `eval_student_mIoU`, `eval_auxiliary_mIoU` and `eval_teacher_mIoU`, so that every evaluation shows
        whether the teacher is stronger than the student it teaches (DUDA's premise), and
        `eval_student_teacher_agreement`: the share of labelled target pixels where the student predicts the teacher's
        class (per class: `per_class_history`, and `student_vs_teacher` in the results).

        Batched (`per_device_eval_batch_size`), decoded by `dataloader_num_workers` workers with Trainer's pin-memory,
        persistent-worker and prefetch settings (`evaluation_loader`). Trainer's own `evaluation_loop` does not fit:
        it runs one model's `prediction_step` and gathers its logits with the batches padded to equal length across
        processes, where this scores three networks at once into streaming confusion matrices over disjoint strides.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        duda = self.accelerator.unwrap_model(self.model)
        networks = {"student": duda.student}
        if duda.aux_student is not None:
            networks["auxiliary"] = duda.aux_student
        if duda.teacher is not None:
            networks["teacher"] = duda.teacher
        elif duda.method == "distill":  # the frozen teachers: `teacher` the first, `teacher_1`, ... the others
            networks.update({f"teacher_{i}" if i else "teacher": net for i, net in enumerate(duda.extra_teachers)})
        was_training = duda.training
        duda.eval()
        use_autocast = self.args.device.type == "cuda" and (self.args.bf16 or self.args.fp16)
        matrices = evaluate_networks(
            networks,
            dataset,
            self.args.device,
            input_size_hw=self.eval_size_hw,
            autocast_dtype=(torch.bfloat16 if self.args.bf16 else torch.float16) if use_autocast else None,
            process_index=self.args.process_index,
            world_size=self.args.world_size,
            agreement=(("student", "teacher"),) if "teacher" in networks else (),
            loader=self._evaluation_loader(dataset),
            progress=self.is_world_process_zero() and not self.args.disable_tqdm,
            keep_progress_bar=False,
        )
        duda.train(was_training)
        results = {}
        metrics = {}
        for name in networks:
            results[name] = matrices[name].compute(class_subsets=self.eval_class_subsets)
            results[name]["num_images"] = len(dataset)
            metrics[f"{metric_key_prefix}_{name}_mIoU"] = round(100 * results[name]["mIoU"], 2)
        record = {"step": self.state.global_step, **{name: results[name]["per_class_iou"] for name in networks}}
        if "student_vs_teacher" in matrices:
            # how far the student has learnt its teacher: its prediction scored against the teacher's
            agreement = matrices["student_vs_teacher"].compute()
            results["student_vs_teacher"] = {key: agreement[key] for key in ("overall_accuracy", "mIoU", "per_class_iou")}
            metrics[f"{metric_key_prefix}_student_teacher_agreement"] = round(100 * agreement["overall_accuracy"], 2)
            record["student_vs_teacher"] = agreement["per_class_iou"]
        self.per_class_history.append(record)
        self.last_eval_results = results
        self.last_eval_step = self.state.global_step
        self.log(metrics)
        send_to_trackers(self, per_class_logs(record, metric_key_prefix))  # not the log history: per_class_history has them
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _evaluation_loader(self, dataset):
        """This process's stride of `dataset` as `evaluate_networks` reads it, with Trainer's DataLoader settings; kept
        for the next evaluation of the same dataset when the workers are persistent (as Trainer keeps its own)."""
        if self._kept_evaluation_loader is not None and self._kept_evaluation_loader[0] is dataset:
            return self._kept_evaluation_loader[1]
        args = self.args
        loader = evaluation_loader(
            dataset,
            batch_size=args.per_device_eval_batch_size,
            num_workers=args.dataloader_num_workers,
            process_index=args.process_index,
            world_size=args.world_size,
            pin_memory=args.dataloader_pin_memory and args.device.type == "cuda",
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            multiprocessing_context=getattr(args, "dataloader_multiprocessing_context", None),
        )
        if args.dataloader_persistent_workers and args.dataloader_num_workers:
            self._kept_evaluation_loader = (dataset, loader)
        return loader
