"""What a person watching a run sees: a progress bar with the time left, one short line per log, the three networks'
target mIoU side by side at each evaluation.

It replaces Trainer's console printers (which print every logged value, the 19 class weights included). Nothing
logged is lost: every value still goes to the trackers (`--report_to`) and the log history (`trainer_state.json`,
`eval_results.json`). Only the main process prints.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

from transformers import TrainerCallback

# the logged loss terms, added up by what they train (docs/method.md, "One training step")
TERM_GROUPS = (
    ("aux", ("loss_aux_source", "loss_aux_mix", "loss_aux_masked")),
    ("student", ("loss_student_source", "loss_student_mix", "loss_student_masked")),
    ("distill", ("loss_student_kd", "loss_student_kd_clean", "loss_student_cwd")),
    ("fd", ("loss_feature_distance",)),
)
NETWORKS = ("student", "auxiliary", "teacher")


def scored_networks(names: Iterable[str]) -> list[str]:
    """The networks among `names` that an evaluation scores, in the order they are shown: the student, the auxiliary
    student, the teacher, then distill's other frozen teachers (`teacher_1`, `teacher_2`, ...)."""
    names = set(names)
    others = sorted((name for name in names if re.fullmatch(r"teacher_\d+", name)), key=lambda name: int(name.split("_")[1]))
    return [name for name in NETWORKS if name in names] + others


def training_line(logs: dict, step: int, max_steps: int) -> str:
    """`step 100/2000  loss 1.2800  aux 0.6407  student 0.5981  distill 0.0406  pseudo-labels 30.6%  lam_t 0.20`."""
    parts = [f"step {step}/{max_steps}", f"loss {logs['loss']:.4f}"]
    for name, terms in TERM_GROUPS:
        present = [logs[term] for term in terms if term in logs]
        if present:
            parts.append(f"{name} {sum(present):.4f}")
    grouped = {term for _, terms in TERM_GROUPS for term in terms}
    other = [value for key, value in logs.items() if key.startswith("loss_") and key not in grouped]
    if other:  # terms passed as DudaTrainer(loss_terms=...)
        parts.append(f"other {sum(other):.4f}")
    if "pseudo_label_quality" in logs:
        parts.append(f"pseudo-labels {100 * logs['pseudo_label_quality']:.1f}%")
    if "lam_t" in logs:
        parts.append(f"lam_t {logs['lam_t']:.2f}")
    if logs.get("bad_samples"):
        parts.append(f"bad samples {logs['bad_samples']}")
    return "  ".join(parts)


def evaluation_line(logs: dict, step: int) -> str | None:
    """`step 500  target mIoU: student 23.03  auxiliary 23.60  teacher 21.77  (agreement 90.7%)`, or None."""
    scored = (key.removeprefix("eval_").removesuffix("_mIoU") for key in logs if key.startswith("eval_") and key.endswith("_mIoU"))
    found = [(name, logs[f"eval_{name}_mIoU"]) for name in scored_networks(scored)]
    if not found:
        return None
    line = f"step {step}  target mIoU: " + "  ".join(f"{name} {value:.2f}" for name, value in found)
    if "eval_student_teacher_agreement" in logs:
        line += f"  (agreement {logs['eval_student_teacher_agreement']:.1f}%)"
    return line


def end_line(logs: dict, step: int) -> str:
    """`trained 2000 steps in 0:05:02  train_loss 1.07100`."""
    seconds = int(logs.get("train_runtime", 0))
    return f"trained {step} steps in {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}  train_loss {logs['train_loss']:.6g}"


class Console(TrainerCallback):
    """A progress bar (unless `--disable_tqdm`) and the lines above, on the main process."""

    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and not args.disable_tqdm:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            line = training_line(logs, state.global_step, state.max_steps)
        elif "train_loss" in logs:
            line = end_line(logs, state.global_step)
        else:
            line = evaluation_line(logs, state.global_step)
        if line is None:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)  # above the bar, which stays on stderr
        else:
            print(line, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
