"""The training step, evaluation and export on a CUDA GPU (marker `gpu`; skipped without one).

`python benchmarks/gpu_check.py` runs these first (`pytest -m gpu`), then times the paper shape. The CPU
counterparts of the precision properties are in `tests/test_precision.py`.
"""

import math
import subprocess
import sys
import warnings

import pytest
import torch

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.training_run import build_trainer
from duda_hf.evaluation.inference import evaluate_networks, predict_slide, predict_whole
from duda_hf.export.network import export_network
from duda_hf.method.losses import fuse_teacher_probs
from duda_hf.networks.inputs import normalize_images

from .conftest import tiny_argv

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run `python benchmarks/gpu_check.py` on one)"),
]

FP32_RTOL = 1e-3  # CPU and CUDA kernels sum in different orders
PSEUDO_LABEL_MARGIN = 0.05  # as in test_precision: only near-ties may take another class


@pytest.fixture(autouse=True)
def strict_fp32():
    """Comparisons with the CPU are made in true fp32 (TF32 off), then the previous settings come back."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def make_trainer(benchmark, output_dir, *extra):
    return build_trainer(*parse_args(tiny_argv(benchmark, output_dir, *extra)))


def fixed_batch(trainer, device, size: int = 2) -> dict[str, torch.Tensor]:
    samples = [trainer.train_dataset[i] for i in range(size)]
    return {key: torch.stack([sample[key] for sample in samples]).to(device) for key in samples[0]}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method", ["duda", "self_training", "source_only"])
def test_training_steps_on_cuda(tiny_benchmark, tmp_path, method, precision):
    trainer = make_trainer(
        tiny_benchmark,
        tmp_path,
        "--method",
        method,
        "--bf16",
        str(precision == "bf16"),
        "--max_steps",
        "2",
        "--preadapt_steps",
        "0",
        "--distill_ramp_steps",
        "1",
    )
    assert trainer.args.device.type == "cuda"
    trainer.train()
    tensors = list(trainer.model.parameters()) + list(trainer.model.buffers())
    assert {t.device.type for t in tensors} == {"cuda"}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}  # master weights and EMA in fp32
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    assert all(math.isfinite(value) for entry in logged for key, value in entry.items() if key.startswith("loss"))


def test_cuda_step_equals_cpu_step_in_fp32(tiny_benchmark, tmp_path):
    # No random draws (no ClassMix, no jitter or blur), so both devices see the same mixed batch.
    flags = (
        "--preadapt_steps",
        "0",
        "--distill_ramp_steps",
        "4",
        "--debug_image_steps",
        "1",
        "--class_mix",
        "false",
        "--color_jitter_p",
        "0",
        "--blur_p",
        "0",
    )
    runs = {}
    for device in ("cpu", "cuda"):
        trainer = make_trainer(tiny_benchmark, tmp_path / device, *flags, "--use_cpu", str(device == "cpu"))
        assert trainer.args.device.type == device
        with torch.no_grad():  # a confident teacher, so that pseudo-labels mean something
            trainer.model.teacher.decode_head.classifier.weight.mul_(1000)
        trainer.state.global_step = 2  # lam_t = 0.5: hard and soft student terms
        loss = trainer.compute_loss(trainer.model, fixed_batch(trainer, device)).detach()
        runs[device] = trainer, loss.cpu(), trainer.step_log.pop_means(), trainer.debug_tensors["mixed_label"].cpu()
    (cpu, cpu_loss, cpu_terms, cpu_labels), (_, cuda_loss, cuda_terms, cuda_labels) = runs["cpu"], runs["cuda"]
    assert float(cuda_loss) == pytest.approx(float(cpu_loss), rel=FP32_RTOL)
    assert set(cuda_terms) == set(cpu_terms)
    for name, value in cpu_terms.items():
        assert cuda_terms[name] == pytest.approx(value, rel=FP32_RTOL, abs=1e-6), name
    target = fixed_batch(cpu, "cpu")["target_image"].float() / 255
    with torch.no_grad():
        probs, _ = fuse_teacher_probs(cpu.model.teacher_logits(target), size=tuple(cpu_labels.shape[-2:]))
    top2 = probs.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > PSEUDO_LABEL_MARGIN
    assert confident.float().mean() > 0.9
    assert torch.equal(cuda_labels[confident], cpu_labels[confident])


def test_duda_step_synchronises_with_the_host_once(tiny_benchmark, tmp_path):
    """The step's only host synchronisation is the finiteness check of the loss terms (DudaTrainer.compute_loss)."""
    trainer = make_trainer(tiny_benchmark, tmp_path, "--bf16", "true", "--preadapt_steps", "0", "--distill_ramp_steps", "2")
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model.train()
    inputs = fixed_batch(trainer, "cuda")
    trainer.state.global_step = 1
    trainer.training_step(model, inputs)  # warm-up: one-time initialisations may synchronise
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.training_step(model, inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "called a synchronizing CUDA operation" in str(w.message)]
    assert len(syncs) == 1 and "trainer.py" in syncs[0], syncs


def confident_student(trainer, device):
    network = trainer.model.student.to(device).eval()
    with torch.no_grad():
        network.decode_head.classifier.weight.mul_(1000)
    return network


def test_inference_and_evaluation_on_cuda_equal_cpu(tiny_benchmark, tmp_path):
    trainer = make_trainer(tiny_benchmark, tmp_path)
    network = confident_student(trainer, "cpu")
    images = normalize_images(torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        cpu_logits = network(pixel_values=images).logits
        cpu_whole = predict_whole(network, images, (64, 128))
        cpu_slide = predict_slide(network, images, (64, 128), window_hw=(64, 64), stride_hw=(32, 32), batch_size=2)
        cpu_matrix = evaluate_networks({"student": network}, trainer.eval_dataset, torch.device("cpu"))["student"].matrix
        network.cuda()
        cuda_logits = network(pixel_values=images.cuda()).logits.cpu()
        cuda_whole = predict_whole(network, images.cuda(), (64, 128)).cpu()
        cuda_slide = predict_slide(network, images.cuda(), (64, 128), window_hw=(64, 64), stride_hw=(32, 32), batch_size=2).cpu()
        cuda_matrix = evaluate_networks({"student": network}, trainer.eval_dataset, torch.device("cuda"))["student"].matrix.cpu()
    torch.testing.assert_close(cuda_logits, cpu_logits, rtol=1e-4, atol=1e-3)
    top2 = torch.nn.functional.interpolate(cpu_logits, size=(64, 128), mode="bilinear").topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-2
    assert clear.float().mean() > 0.95
    assert torch.equal(cuda_whole[clear], cpu_whole[clear])
    assert (cuda_slide != cpu_slide).float().mean() < 1e-3
    assert cuda_matrix.sum() == cpu_matrix.sum()
    assert (cuda_matrix - cpu_matrix).abs().sum() <= 2e-3 * cpu_matrix.sum()


def test_export_from_cuda_reloads_with_plain_transformers(tiny_benchmark, tmp_path):
    trainer = make_trainer(tiny_benchmark, tmp_path / "run")
    network = trainer.model.student.cuda().eval()
    folder = export_network(network, tmp_path / "student", eval_size_hw=(64, 128))
    images = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        expected = network(pixel_values=images.cuda()).logits.cpu()
    torch.save(expected, tmp_path / "expected.pt")
    check = (
        "import sys, torch\n"
        "from transformers import AutoModelForSemanticSegmentation\n"
        f"model = AutoModelForSemanticSegmentation.from_pretrained({str(folder)!r}).cuda().eval()\n"
        "assert 'duda_hf' not in sys.modules\n"
        "torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False\n"
        f"images = torch.load({str(tmp_path / 'images.pt')!r})\n"
        "with torch.no_grad():\n"
        "    logits = model(pixel_values=images.cuda()).logits.cpu()\n"
        f"torch.testing.assert_close(logits, torch.load({str(tmp_path / 'expected.pt')!r}), rtol=0, atol=1e-5)\n"
        "print('reloaded', tuple(logits.shape))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["reloaded", "(1,", "19,", "16,", "32)"]
