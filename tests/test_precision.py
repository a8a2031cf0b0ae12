"""Device-clean and mixed-precision behaviour of the training step, checked on the CPU.

The GPU runs of the same properties are in `tests/test_gpu.py` (marker `gpu`), run by `benchmarks/gpu_check.py`.
"""

import pytest
import torch
import torch.nn.functional as F

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.training_run import build_trainer
from duda_hf.export.network import export_network
from duda_hf.networks.loading import build_network
from duda_hf.training.step_log import StepLog

from .conftest import tiny_argv

# bf16 keeps 8 bits of mantissa; a loss is a mean over thousands of pixels, so its rounding averages out.
LOSS_RTOL = 5e-3
# A pixel whose fp32 teacher's top logit leads the second by at least this share of its largest logit keeps its
# pseudo-label in bf16 (8 bits of mantissa: 0.4% per rounding, about 1% through the network). A margin in
# probability would not do: the teacher in train mode normalises with the batch's statistics, its logits are large and
# its softmax saturates, so pixels at 1 ulp of a tie show a probability margin near 1.
PSEUDO_LABEL_MARGIN = 0.02


def make_trainer(benchmark, output_dir, *extra):
    return build_trainer(*parse_args(tiny_argv(benchmark, output_dir, *extra)))


def fixed_batch(trainer, size: int = 2) -> dict[str, torch.Tensor]:
    samples = [trainer.train_dataset[i] for i in range(size)]
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}


@pytest.mark.parametrize(
    "method, extra",
    [
        ("duda", ("--fd_lambda", "0.5")),
        ("duda", ("--extra_teachers", "EXTRA")),
        ("distill", ("--teacher", "EXTRA", "--kd_clean_target", "1")),
        ("self_training", ()),
        ("source_only", ()),
    ],
    ids=["duda-feature-distance", "duda-extra-teacher", "distill", "self_training", "source_only"],
)
def test_step_makes_every_tensor_on_its_inputs_device(tiny_benchmark, tmp_path, method, extra):
    """A tensor made without a device would land on the default device: here `meta`, which nothing can mix with.

    On an accelerator such a tensor (a CPU tensor) stops the step with "Expected all tensors to be on the same
    device"; the CPU run catches the same mistake by making the default device one the inputs are not on.
    """
    if "EXTRA" in extra:
        folder = str(export_network(build_network("tiny"), tmp_path / "extra"))
        extra = tuple(folder if flag == "EXTRA" else flag for flag in extra)
    trainer = make_trainer(
        tiny_benchmark,
        tmp_path / "run",
        "--method",
        method,
        "--bf16",
        "true",
        "--preadapt_steps",
        "0",
        "--distill_ramp_steps",
        "2",
        "--debug_image_steps",
        "1",
        *extra,
    )
    if "--fd_lambda" in extra:  # the feature distance needs a frozen ImageNet encoder: stand one in
        import copy

        trainer.model.imagenet_encoder = copy.deepcopy(trainer.model.aux_student.segformer).requires_grad_(False)
    trainer.state.global_step = 1  # lam_t = 0.5: both the hard and the soft student terms
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which this bypasses
    model = trainer.model.train()
    inputs = fixed_batch(trainer)
    with torch.device("meta"):
        loss = trainer.training_step(model, inputs)
    assert loss.device.type == "cpu" and torch.isfinite(loss)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and p.grad.device.type == "cpu" for p in trained)
    logged = trainer.step_log.pop_means()
    assert logged["loss_student_source"] > 0
    if method in ("duda", "distill"):
        assert logged["lam_t"] == 0.5 and logged["class_weight_road"] == pytest.approx(1.0)


def test_bf16_step_gives_the_fp32_pseudo_labels_and_losses(tiny_benchmark, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        trainer = make_trainer(
            tiny_benchmark,
            tmp_path / precision,
            "--bf16",
            str(precision == "bf16"),
            "--preadapt_steps",
            "0",
            "--distill_ramp_steps",
            "4",
            "--debug_image_steps",
            "1",
        )
        with torch.no_grad():  # a confident teacher, so that pseudo-labels mean something
            trainer.model.teacher.decode_head.classifier.weight.mul_(1000)
        trainer.state.global_step = 2  # lam_t = 0.5
        loss = trainer.compute_loss(trainer.model, fixed_batch(trainer)).detach()
        runs[precision] = trainer, loss, trainer.step_log.pop_means(), trainer.debug_tensors["mixed_label"]
    (fp32, fp32_loss, fp32_terms, fp32_labels), (bf16, bf16_loss, bf16_terms, bf16_labels) = runs["fp32"], runs["bf16"]
    for (name, a), b in zip(fp32.model.named_parameters(), bf16.model.parameters()):
        assert torch.equal(a, b), name  # the same networks: only the precision differs
    assert bf16_loss.dtype == torch.float32
    assert float(bf16_loss) == pytest.approx(float(fp32_loss), rel=LOSS_RTOL)
    assert set(bf16_terms) == set(fp32_terms)
    for name in [n for n in fp32_terms if n.startswith("loss_")]:
        assert bf16_terms[name] == pytest.approx(fp32_terms[name], rel=LOSS_RTOL), name

    # Pseudo-labels: identical wherever the fp32 teacher is not near a tie.
    target = fixed_batch(fp32)["target_image"].float() / 255
    with torch.no_grad():
        (logits,) = fp32.model.teacher_logits(target)
        logits = F.interpolate(logits, size=tuple(fp32_labels.shape[-2:]), mode="bilinear", align_corners=False)
    top2 = logits.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]) / logits.abs().amax(dim=1)
    differ = fp32_labels != bf16_labels
    assert (margin > PSEUDO_LABEL_MARGIN).float().mean() > 0.8  # the check covers most pixels
    assert not differ[margin > PSEUDO_LABEL_MARGIN].any()
    assert differ.float().mean() < 0.01


def test_bf16_training_keeps_fp32_master_weights_and_teacher(tiny_benchmark, tmp_path):
    trainer = make_trainer(tiny_benchmark, tmp_path, "--bf16", "true", "--max_steps", "2")
    trainer.train()
    assert trainer.accelerator.mixed_precision == "bf16"
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}  # students, EMA teacher: fp32
    losses = [entry["loss_aux_mix"] for entry in trainer.state.log_history if "loss_aux_mix" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_step_log_reads_the_device_once_per_logging_step():
    log = StepLog()
    weights = torch.arange(19, dtype=torch.float32)
    log.add({"loss_a": torch.tensor(1.0), "lam_t": 0.25, "class_weight": weights})
    log.add({"loss_a": torch.tensor(2.0), "lam_t": 0.75, "class_weight": weights + 1})
    means = log.pop_means()
    assert means["loss_a"] == 1.5 and means["lam_t"] == 0.5
    assert means["class_weight_road"] == 0.5 and means["class_weight_traffic_light"] == 6.5 and means["class_weight_bicycle"] == 18.5
    assert len([name for name in means if name.startswith("class_weight_")]) == 19
    assert log.pop_means() == {}  # reset after each read
