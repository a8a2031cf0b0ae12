"""A real two-process DDP run on CPU through `accelerate launch`."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import tiny_argv

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        (),
        # the issue-21 additions: a student-only stage (the auxiliary student gets no gradient, so DDP must not wait
        # for one) and the clean-target terms (a larger student batch than the auxiliary's); the large network trained
        # as HRDA until the stage (each process its own detail crop, the scale attention's gradients averaged)
        (
            *("--distill_stage_steps", "2", "--kd_clean_target", "1", "--cwd_weight", "1"),
            *("--aux_student", "tiny-wide-daformer", "--hrda", "true"),
        ),
        # the DAFormer head (BatchNorm in its ASPP) on both networks
        ("--student", "tiny-daformer", "--aux_student", "tiny-wide-daformer"),
        # MIC's masked images: a larger batch for each network, the student's beside its clean-target images; and the
        # auxiliary student a DINOv2 UperNet (patch-size padding, logits at the input size)
        (
            *("--mic_lambda", "1", "--mic_student", "true", "--kd_clean_target", "1", "--pseudo_label_threshold", "0"),
            *("--aux_student", "dinov2-upernet-tiny"),
        ),
        # distilling a frozen DINOv2 UperNet teacher: the student alone is trained (no EMA teacher, no auxiliary student)
        ("--method", "distill", "--teacher", "dinov2-upernet-tiny", "--kd_clean_target", "1", "--cwd_weight", "1"),
    ],
    ids=["paper_step", "stage_clean_target_hrda", "daformer_heads", "mic_dinov2_aux", "distill_dinov2_teacher"],
)
def test_two_process_ddp_ends_with_identical_weights(tiny_benchmark, tmp_path, extra):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    command = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(ROOT / "tests" / "helpers" / "ddp_probe.py"),
        *tiny_argv(tiny_benchmark, tmp_path, "--per_device_train_batch_size", "1", "--dataloader_num_workers", "0", *extra),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [4, 4]
    # Each process drew its own samples: no index twice, 4 steps x 2 processes x 1 image.
    indices = ranks[0]["indices"] + ranks[1]["indices"]
    assert len(indices) == 8 and len(set(indices)) == 8
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # the confusion matrices were summed across processes
    # The logged terms and diagnostics are means over both processes, as Trainer's `loss` is: the same on each
    # process, and the terms add up to the loss at every logging step (docs/design.md, "Training contract").
    logs = [[entry for entry in rank["log_history"] if "loss" in entry] for rank in ranks]
    assert len(logs[0]) == 4 and logs[0] == logs[1]
    for entry in logs[0]:
        terms = sum(value for name, value in entry.items() if name.startswith("loss_"))
        assert terms == pytest.approx(entry["loss"], rel=1e-4, abs=1e-5), entry
    ends = [[entry["train_loss"] for entry in rank["log_history"] if "train_loss" in entry] for rank in ranks]
    assert ends[0] == ends[1] and ends[0][0] == pytest.approx(sum(entry["loss"] for entry in logs[0]) / 4, rel=1e-4)
    expected = ["student"] if "distill" in extra else ["student", "teacher", "aux_student"]
    assert ranks[0]["networks"] == ranks[1]["networks"] == expected
    for network in expected:
        first, second = (load_file(tmp_path / f"{network}_rank{r}.safetensors") for r in (0, 1))
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), f"{network}.{key} differs between ranks"


# A program whose last collective returns just before it ends: each process's gloo worker still has to free that
# collective's tensors, which needs the GIL. Without `leave_process_group` a third of such processes abort in
# interpreter shutdown (SIGABRT, "terminate called without an active exception"), or hang if the group is freed
# first; the CI run of one preempted DDP test ended that way.
LAST_COLLECTIVE_THEN_EXIT = """
import sys, torch, torch.distributed as dist
from duda_hf.cli.errors import program

@program
def main(argv=None):
    dist.init_process_group("gloo")
    for buffer in [torch.zeros(1000) for _ in range(8)]:
        dist.broadcast(buffer, src=0)  # as SyncBatchNormBuffers does at the end of training
    return 0

sys.exit(main())
"""


def _two_processes(script) -> list[subprocess.Popen]:
    """`script` as processes 0 and 1 of a 2-process gloo group on this machine (stdout and stderr together)."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
    }
    return [
        subprocess.Popen(
            [sys.executable, str(script)],
            env={**environment, "RANK": str(rank)},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]


@pytest.mark.slow
def test_a_program_that_ends_right_after_a_collective_exits_with_its_status(tmp_path):
    script = tmp_path / "last_collective.py"
    script.write_text(LAST_COLLECTIVE_THEN_EXIT)
    statuses = []
    for _ in range(8):  # unfixed, 8 of 24 such processes aborted here: all 16 ending well is a 1-in-600 chance
        processes = _two_processes(script)
        for process in processes:
            try:
                output, _ = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                for other in processes:
                    other.kill()
                pytest.fail("a process did not end within 60 s of its last collective (a deadlock in the group's teardown)")
            statuses.append((process.returncode, output[-500:]))
    assert all(code == 0 for code, _ in statuses), [entry for entry in statuses if entry[0] != 0]


# A stop (exit status 143, `TrainingPreempted`) while a DistributedDataParallel model is alive, held by the frames of
# the stop's traceback (the model's C++ reducer holds the process group), and whose gloo worker frees its last
# collective's tensor late: process 1 joins process 0's last broadcast a second after process 0's `main` has ended,
# as a worker that a loaded machine does not schedule would. Unfixed (a 0.25 s pause, then `destroy_process_group`,
# which cannot free a group the model holds), the model was freed when the traceback went, with the GIL held, and the
# group's destructor joined a worker that waited for that GIL: process 0 hung in every round, with the pause or
# without. `leave_process_group` is now called once the traceback is gone, so `destroy_process_group` frees the
# group and joins its workers with the GIL released.
LATE_WORKER_THEN_STOP = """
import signal, sys, time, torch, torch.distributed as dist
from types import SimpleNamespace
from duda_hf.cli.errors import program
from duda_hf.training.preemption import Preemption

@program
def main(argv=None):
    dist.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    if dist.get_rank() == 1:
        time.sleep(1)
    dist.broadcast(torch.zeros(1000), src=0, async_op=True)  # not waited for: on process 0 it ends after `main`
    preemption = Preemption()
    preemption.signum = signal.SIGTERM
    preemption.raise_if_stopped(SimpleNamespace(global_step=1, max_steps=2), "unused")

sys.exit(main())
"""


@pytest.mark.slow
def test_a_stop_with_a_late_gloo_worker_exits_with_its_status(tmp_path):
    script = tmp_path / "late_worker.py"
    script.write_text(LATE_WORKER_THEN_STOP)
    for _ in range(2):  # unfixed, process 0 hung in each round
        processes = _two_processes(script)
        for rank, process in enumerate(processes):
            try:
                output, _ = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                for other in processes:
                    other.kill()
                pytest.fail(f"process {rank} did not end within 60 s of its stop (a deadlock in the group's teardown)")
            assert process.returncode == 143, output[-1000:]
            assert output.strip().splitlines()[-1].startswith("training stopped by SIGTERM after step 1 of 2"), output[-1000:]
