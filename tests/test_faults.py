"""Fault injection on real training processes: kill -9 at seeded moments (also mid-save), SIGTERM, SIGINT, two signals.

Every run is `scripts/train_duda.py` on the tiny benchmark (6 steps), a real process sent real signals. A run that
was interrupted and resumed must end with the same bits as the run that was not: every network, the EMA teacher
and the class inconsistency state of its last checkpoint, the exported student and teacher, and `train_loss`.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import tiny_argv

ROOT = Path(__file__).resolve().parents[1]
# One thread: runs on a busy machine stay fast, and every run computes in the same order (bit-identical results).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
STEPS = 6
EVERY_STEP = ("--save_strategy", "steps", "--save_steps", "1")


class Run:
    """`scripts/train_duda.py` in its own process, its output in files (no pipe to fill)."""

    def __init__(self, benchmark, output_dir: Path, *extra, launcher: tuple[str, ...] = (sys.executable,), log_name: str | None = None):
        self.output_dir = output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        name = log_name or output_dir.name
        self.stdout_path, self.stderr_path = output_dir.parent / f"{name}.out", output_dir.parent / f"{name}.err"
        argv = tiny_argv(benchmark, output_dir, "--max_steps", str(STEPS), *extra)
        command = [*launcher, str(ROOT / "scripts" / "train_duda.py"), *argv]
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:  # a process group of its own, as in a terminal
            self.process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=ROOT, env=ENV, start_new_session=True)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_until(self, condition, timeout: float = 120) -> None:
        """Poll `condition()` every half millisecond; fail if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"the run ended (rc {self.process.returncode}) before the moment awaited:\n{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"the moment awaited did not come within {timeout} s")
            time.sleep(0.0005)

    def steps_logged(self) -> int:
        return len(re.findall(r"^step \d+/\d+  loss ", self.stdout, re.MULTILINE))

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the run did not end within {timeout} s:\n{self.stderr[-3000:]}")


def train_loss(run: Run) -> str:
    return re.findall(r"^trained \d+ steps in \S+  train_loss (\S+)$", run.stdout, re.MULTILINE)[-1]


def assert_same_bits(expected: Path, actual: Path) -> None:
    first, second = load_file(expected), load_file(actual)
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert not different, f"{actual} differs from {expected} in {different[:5]}"


def assert_ends_like(reference: Path, run_dir: Path) -> None:
    """The run ended with the reference run's exported student and teacher, bit for bit."""
    for network in ("student", "teacher"):
        assert_same_bits(reference / network / "model.safetensors", run_dir / network / "model.safetensors")


def assert_checkpoints_complete(run_dir: Path) -> list[int]:
    """Every `checkpoint-N` the run left is whole (its weights load); returns the steps."""
    steps = []
    for checkpoint in sorted(run_dir.glob("checkpoint-*")):
        names = {p.name for p in checkpoint.iterdir()}
        assert {"model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "trainer_state.json"} <= names
        assert {"networks.json", "training_args.json"} <= names
        # the random state of each process: rng_state.* with one, rng_state_<rank>.* with several
        assert {"rng_state.safetensors", "rng_state.json"} <= names or {"rng_state_0.safetensors", "rng_state_1.json"} <= names
        assert all(name.endswith((".safetensors", ".json")) for name in names), names  # no pickle
        load_file(checkpoint / "model.safetensors")
        steps.append(int(checkpoint.name.split("-")[1]))
    return steps


@pytest.fixture(scope="module")
def reference(tiny_benchmark, tmp_path_factory):
    """The uninterrupted run, a checkpoint at every step."""
    run = Run(tiny_benchmark, tmp_path_factory.mktemp("faults") / "reference", *EVERY_STEP)
    assert run.finish() == 0, run.stderr[-3000:]
    assert assert_checkpoints_complete(run.output_dir) == list(range(1, STEPS + 1))
    return run


# kill -9 during a save: when the staging folder appears, when the weights are being written, when the optimizer is
KILL_DURING_SAVE = ("", "model.safetensors", "optimizer.safetensors")
TRIALS = [(0, "save"), (1, "save"), (2, "step")]  # (seed, where the kill lands); the seed picks the step and the moment


@pytest.mark.slow
def test_kill_9_at_seeded_moments_then_resume_is_bit_identical(reference, tiny_benchmark, tmp_path):
    mid_save = []
    for seed, where in TRIALS:
        rng = random.Random(seed)
        step = rng.randint(1, STEPS - 1)
        run = Run(tiny_benchmark, tmp_path / f"trial{seed}", *EVERY_STEP)
        staging = run.output_dir / ".partial-checkpoints" / f"checkpoint-{step}"
        if where == "save":
            part = rng.choice(KILL_DURING_SAVE)
            moment = f"saving checkpoint-{step} ({'started' if not part else part + ' begun'})"
            run.wait_until(lambda staging=staging, part=part: (staging / part).exists())
        else:
            delay = rng.uniform(0, 0.08)
            moment = f"{1000 * delay:.0f} ms after checkpoint-{step}"
            run.wait_until(lambda run=run, step=step: (run.output_dir / f"checkpoint-{step}").is_dir())
            time.sleep(delay)
        run.process.send_signal(signal.SIGKILL)
        assert run.finish() == -signal.SIGKILL
        saved = assert_checkpoints_complete(run.output_dir)  # a kill never leaves a half-written checkpoint-N
        if where == "save" and staging.is_dir() and not (run.output_dir / f"checkpoint-{step}").exists():
            mid_save.append(moment)  # the kill landed inside the save: its debris stays in the staging folder
        print(f"trial {seed}: kill -9 {moment}; complete checkpoints {saved}")

        resumed = Run(tiny_benchmark, run.output_dir, *EVERY_STEP, "--resume_from_checkpoint", "last")
        assert resumed.finish() == 0, resumed.stderr[-3000:]
        if saved:
            assert f"resuming from {run.output_dir / f'checkpoint-{saved[-1]}'}: step {saved[-1]} of {STEPS}" in resumed.stderr
        else:
            assert "no checkpoint in" in resumed.stderr and "starts from step 0" in resumed.stderr
        assert_same_bits(
            reference.output_dir / f"checkpoint-{STEPS}" / "model.safetensors", run.output_dir / f"checkpoint-{STEPS}" / "model.safetensors"
        )
        assert_ends_like(reference.output_dir, run.output_dir)
        assert train_loss(resumed) == train_loss(reference), "train_loss must cover the whole run"
    assert mid_save, "no kill landed inside a save"


def _stop_after_two_steps(run: Run, signum: int, group: bool = False) -> float:
    run.wait_until(lambda: run.steps_logged() >= 2)
    began = time.monotonic()
    if group:  # Ctrl-C in a terminal: the signal reaches every process of the group, DataLoader workers too
        os.killpg(run.process.pid, signum)
    else:
        run.process.send_signal(signum)
    code = run.finish()
    seconds = time.monotonic() - began
    assert code == 128 + signum, run.stderr[-3000:]
    return seconds


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_says_how_to_resume_and_the_resume_is_bit_identical(reference, tiny_benchmark, tmp_path):
    run = Run(tiny_benchmark, tmp_path / "run", "--save_strategy", "no")  # no checkpoint but the one SIGTERM asks for
    seconds = _stop_after_two_steps(run, signal.SIGTERM)
    stopped = re.search(r"training stopped by SIGTERM after step (\d+) of 6: checkpoint (\S+) holds", run.stderr)
    assert stopped and "--resume_from_checkpoint last" in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]
    step = int(stopped.group(1))
    assert stopped.group(2) == str(run.output_dir / f"checkpoint-{step}")
    assert assert_checkpoints_complete(run.output_dir) == [step] and not (run.output_dir / "student").exists()
    print(f"SIGTERM after step 2 or later: checkpoint-{step} saved and the process ended {seconds:.2f} s after the signal")
    assert seconds < 30

    resumed = Run(tiny_benchmark, run.output_dir, "--save_strategy", "no", "--resume_from_checkpoint", "last")
    assert resumed.finish() == 0, resumed.stderr[-3000:]
    said = f"resuming from {run.output_dir / f'checkpoint-{step}'}: step {step} of 6; restored every trained network"
    assert said in resumed.stderr and "the optimizer, the learning-rate schedule, the random state" in resumed.stderr
    assert_ends_like(reference.output_dir, run.output_dir)
    assert train_loss(resumed) == train_loss(reference)


NO_PICKLE = """
import pickle, runpy, sys, torch

def refuse(*args, **kwargs):
    raise RuntimeError("a pickle was read")

torch.load = pickle.load = pickle.loads = refuse
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
def test_a_resume_reads_no_pickle_and_is_bit_identical(reference, tiny_benchmark, tmp_path):
    """Every file of a checkpoint is safetensors or JSON, and a resume with torch.load and pickle made to fail ends
    exactly like the uninterrupted run."""
    wrapper = tmp_path / "no_pickle.py"
    wrapper.write_text(NO_PICKLE)
    run_dir = tmp_path / "run"
    shutil.copytree(reference.output_dir / "checkpoint-3", run_dir / "checkpoint-3")
    resumed = Run(tiny_benchmark, run_dir, "--resume_from_checkpoint", "last", launcher=(sys.executable, str(wrapper)))
    assert resumed.finish() == 0, resumed.stderr[-3000:]
    assert "the optimizer, the learning-rate schedule, the random state" in resumed.stderr
    assert_ends_like(reference.output_dir, run_dir)
    assert train_loss(resumed) == train_loss(reference)


@pytest.mark.slow
def test_a_checkpoint_of_the_earlier_pickled_format_still_resumes_exactly(reference, tiny_benchmark, tmp_path):
    """optimizer.pt, scheduler.pt and rng_state.pth, as duda-hf wrote them before: read by Trainer with
    torch.load(weights_only=True), and the run ends as the uninterrupted one; its next checkpoints have no pickle."""
    from duda_hf.training import state_files

    run_dir = tmp_path / "run"
    older = run_dir / "checkpoint-3"
    shutil.copytree(reference.output_dir / "checkpoint-3", older)
    torch.save(state_files.optimizer_state_dict(older), older / "optimizer.pt")
    torch.save(json.loads((older / "scheduler.json").read_text()), older / "scheduler.pt")
    states = state_files.random_state(older, 0, 1)
    torch.save({"python": states["python"], "numpy": states["numpy"], "cpu": states["cpu"]}, older / "rng_state.pth")
    for name in ("optimizer.safetensors", "optimizer.json", "scheduler.json", "rng_state.safetensors", "rng_state.json"):
        (older / name).unlink()
    resumed = Run(tiny_benchmark, run_dir, "--resume_from_checkpoint", "last", *EVERY_STEP)
    assert resumed.finish() == 0, resumed.stderr[-3000:]
    assert "an earlier duda-hf's pickles, read with torch.load(weights_only=True)" in resumed.stderr
    assert_ends_like(reference.output_dir, run_dir)
    assert train_loss(resumed) == train_loss(reference)
    shutil.rmtree(older)
    assert assert_checkpoints_complete(run_dir) == [4, 5, 6]  # the run's next checkpoints: the new format


@pytest.mark.slow
def test_a_resume_that_restores_callback_states_keeps_the_whole_runs_loss(reference, tiny_benchmark, tmp_path):
    """`--restore_callback_states_from_checkpoint`: Trainer rebuilds the run-loss callback from the checkpoint's record."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference.output_dir / "checkpoint-3", run_dir / "checkpoint-3")
    resumed = Run(tiny_benchmark, run_dir, "--resume_from_checkpoint", "last", "--restore_callback_states_from_checkpoint", "true")
    assert resumed.finish() == 0, resumed.stderr[-3000:]
    assert_ends_like(reference.output_dir, run_dir)
    assert train_loss(resumed) == train_loss(reference)


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_130_without_a_traceback(tiny_benchmark, tmp_path):
    run = Run(tiny_benchmark, tmp_path / "run", "--save_strategy", "no", "--dataloader_num_workers", "2")
    _stop_after_two_steps(run, signal.SIGINT, group=True)
    assert "training stopped by SIGINT" in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.count("received SIGINT") == 1  # the training process decides, not its workers
    assert len(assert_checkpoints_complete(run.output_dir)) == 1


@pytest.mark.slow
def test_a_second_signal_ends_the_process_at_once(tiny_benchmark, tmp_path):
    run = Run(tiny_benchmark, tmp_path / "run", "--save_strategy", "no", "--max_steps", "10000")
    run.wait_until(lambda: run.steps_logged() >= 1)
    began = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    run.process.send_signal(signal.SIGTERM)
    assert run.finish() == -signal.SIGTERM  # ended by the signal itself, not by the orderly stop (143)
    seconds = time.monotonic() - began
    print(f"two SIGTERMs 10 ms apart: the process ended {seconds:.2f} s after the first")
    assert seconds < 5
    assert "received SIGTERM" in run.stderr


@pytest.mark.slow
def test_ddp_sigterm_to_one_process_stops_every_process_at_the_same_step(tiny_benchmark, tmp_path):
    from .test_ddp import free_port

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    launcher = (
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
    )
    run = Run(
        tiny_benchmark,
        tmp_path / "run",
        "--save_strategy",
        "no",
        "--max_steps",
        "10000",
        "--per_device_train_batch_size",
        "1",
        "--dataloader_num_workers",
        "0",
        launcher=launcher,
    )
    run.wait_until(lambda: run.steps_logged() >= 2, timeout=240)
    ranks = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        environ = _environ(pid)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"train_duda.py" in command and environ.get("MASTER_PORT") == launcher[-1] and "RANK" in environ:
            ranks[int(environ["RANK"])] = int(pid)
    assert sorted(ranks) == [0, 1], ranks
    began = time.monotonic()
    os.kill(ranks[1], signal.SIGTERM)  # only the second process is told, as when one machine of a job is reclaimed
    run.finish(timeout=240)
    print(f"DDP, SIGTERM to process 1 of 2: both stopped, the launcher ended {time.monotonic() - began:.2f} s after the signal")
    stops = re.findall(r"training stopped by SIGTERM after step (\d+) of 10000: checkpoint (\S+) holds", run.stderr)
    assert len(stops) == 2 and stops[0] == stops[1], run.stderr[-4000:]  # both processes, the same step and checkpoint
    # every process ends with the stop's status: not a crash in shutdown, not killed by the launcher while ending
    assert re.findall(r"exitcode\s*: (-?\d+)", run.stderr.split("Failures:")[-1]) == ["143", "143"], run.stderr[-4000:]
    assert assert_checkpoints_complete(run.output_dir) == [int(stops[0][0])]


def truncated_copy(folder: str, indices: set[int], out: Path) -> str:
    """A copy of a save_to_disk set whose images at `indices` are cut short after their header."""
    import datasets

    data = datasets.load_from_disk(folder).cast_column("image", datasets.Image(decode=False))

    def cut(row, index):
        if index in indices:
            row["image"] = {"bytes": row["image"]["bytes"][:400], "path": None}
        return row

    data.map(cut, with_indices=True).cast_column("image", datasets.Image()).save_to_disk(str(out))
    return str(out)


@pytest.mark.slow
def test_truncated_images_in_a_stored_set_are_skipped_and_counted(tiny_benchmark, tmp_path):
    source = truncated_copy(tiny_benchmark["source"], {1, 5, 9}, tmp_path / "source")
    run = Run({**tiny_benchmark, "source": source}, tmp_path / "run", "--max_bad_sample_share", "0.9")
    assert run.finish() == 0, run.stderr[-3000:]
    named = re.findall(r"--source_dataset: sample #(\d+) cannot be decoded \(image file is truncated", run.stderr)
    assert named and set(map(int, named)) <= {1, 5, 9}
    results = json.loads((run.output_dir / "eval_results.json").read_text())
    # counted once per draw that was replaced (a replacement that fails too warns again)
    assert 1 <= results["bad_samples"]["count"] <= len(named) and results["bad_samples"]["draws"] == STEPS * 2 * 2
    assert {name.split("#")[1] for name in results["bad_samples"]["first"]} <= set(named)
    logged = re.findall(r"  bad samples (\d+)", run.stdout)
    assert logged and int(logged[-1]) == results["bad_samples"]["count"]  # the count so far, at each logging step


@pytest.mark.slow
def test_a_set_with_too_many_undecodable_images_stops_with_one_line(tiny_benchmark, tmp_path):
    source = truncated_copy(tiny_benchmark["source"], set(range(12)), tmp_path / "source")
    run = Run({**tiny_benchmark, "source": source}, tmp_path / "run")
    assert run.finish() == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert re.search(
        r"error: \d+ of the \d+ training images drawn so far could not be decoded \(more than --max_bad_sample_share 0.01\): --source_dataset #\d+",
        errors[0],
    )
    assert "resume with --resume_from_checkpoint last" in errors[0]


DISK_FULL = """
import runpy, sys
from safetensors import SafetensorError
from duda_hf.training import checkpointing

real = checkpointing.save_file

def save_file(tensors, path, *args, **kwargs):
    if "checkpoint-2" in str(path):  # the disk fills up during the second save
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    return real(tensors, path, *args, **kwargs)

checkpointing.save_file = save_file
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_the_next_start_cleans_up(reference, tiny_benchmark, tmp_path):
    wrapper = tmp_path / "disk_full.py"
    wrapper.write_text(DISK_FULL)
    run = Run(tiny_benchmark, tmp_path / "run", *EVERY_STEP, launcher=(sys.executable, str(wrapper)))
    assert run.finish() == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert re.search(
        rf"error: disk full while writing checkpoint-2 in {re.escape(str(run.output_dir))}: a checkpoint needs about [0-9.]+ MB \([0-9,]+ bytes\)",
        errors[0],
    )
    assert f"Last complete checkpoint: {run.output_dir / 'checkpoint-1'}" in errors[0]
    assert (run.output_dir / ".partial-checkpoints" / "checkpoint-2").is_dir() and assert_checkpoints_complete(run.output_dir) == [1]
    resumed = Run(tiny_benchmark, run.output_dir, *EVERY_STEP, "--resume_from_checkpoint", "last")
    assert resumed.finish() == 0, resumed.stderr[-3000:]
    assert "partial copy of an interrupted save" in resumed.stderr
    assert not (run.output_dir / ".partial-checkpoints").exists()
    assert_ends_like(reference.output_dir, run.output_dir)


@pytest.mark.slow
def test_two_machines_train_are_preempted_on_one_and_resume(tiny_benchmark, tmp_path):
    """accelerate's multi-machine launch, one process per "machine" on this host (the output folder shared, as on a
    cluster's file system): SIGTERM on machine 1 stops both at the same step with one checkpoint, and both resume."""
    from .test_ddp import free_port

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))

    def machine(rank: int, port: int, *extra: str) -> Run:
        launcher = (accelerate, "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2")
        launcher += (
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        )
        flags = ("--per_device_train_batch_size", "1", "--dataloader_num_workers", "0", *extra)
        return Run(tiny_benchmark, tmp_path / "run", *flags, launcher=launcher, log_name=f"machine{rank}")

    port = free_port()
    machines = [machine(rank, port, "--save_strategy", "no", "--max_steps", "10000") for rank in (0, 1)]
    machines[0].wait_until(lambda: machines[0].steps_logged() >= 2, timeout=240)
    pid = next(
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit() and _environ(p).get("RANK") == "1" and _environ(p).get("MASTER_PORT") == str(port)
    )
    os.kill(pid, signal.SIGTERM)  # machine 1 is reclaimed
    for run in machines:
        run.finish(timeout=240)
    stops = [re.findall(r"training stopped by SIGTERM after step (\d+) of 10000: checkpoint (\S+) holds", run.stderr) for run in machines]
    assert stops[0] and stops[0] == stops[1], machines[1].stderr[-3000:]
    step = int(stops[0][0][0])
    assert assert_checkpoints_complete(tmp_path / "run") == [step]
    assert {"rng_state_0.safetensors", "rng_state_1.safetensors"} <= {p.name for p in (tmp_path / "run" / f"checkpoint-{step}").iterdir()}

    port = free_port()
    resumed = [machine(rank, port, "--resume_from_checkpoint", "last", "--max_steps", str(step + 2)) for rank in (0, 1)]
    assert [run.finish(timeout=240) for run in resumed] == [0, 0], resumed[1].stderr[-3000:]
    assert f"resuming from {tmp_path / 'run' / f'checkpoint-{step}'}: step {step}" in resumed[0].stderr
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()


def _environ(pid: str) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    except (OSError, UnicodeDecodeError):
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


# ---- several processes: each says why it stopped -------------------------------------------------------------------

FAIL_ON_PROCESS_1 = """
import os, runpy, sys
from duda_hf.training.trainer import DudaTrainer

real = DudaTrainer.training_step

def training_step(self, *args, **kwargs):
    if os.environ["RANK"] == "1" and self.state.global_step == 2:  # a bug that only process 1 meets
        raise RuntimeError("injected on process 1 at step 3")
    return real(self, *args, **kwargs)

DudaTrainer.training_step = training_step
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def _two_process_run(benchmark, tmp_path: Path, wrapper_source: str, *extra: str) -> tuple[Run, list[str]]:
    """A two-process `accelerate launch` of `wrapper_source` around `scripts/train_duda.py`, run to its end; returns
    the run and each process's own stderr (the launcher's `--tee` copies)."""
    from .test_ddp import free_port

    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(wrapper_source)
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    launcher = (accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no")
    launcher += ("--dynamo_backend", "no", "--main_process_port", str(free_port()), "--tee", "3", "--log_dir", str(tmp_path / "logs"))
    flags = ("--per_device_train_batch_size", "1", "--dataloader_num_workers", "0", *extra)
    run = Run(benchmark, tmp_path / "run", *flags, launcher=(*launcher, str(wrapper)))
    assert run.finish(timeout=240) != 0, run.stderr[-3000:]
    return run, [next((tmp_path / "logs").glob(f"*/attempt_0/{rank}/stderr.log")).read_text() for rank in (0, 1)]


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def _root_cause(launcher_stderr: str) -> tuple[int, int]:
    """The process the launcher names as the root cause of the failure, and its exit status."""
    found = re.search(
        r"Root Cause \(first observed failure\):\n\[\d+\]:\n(?:.*\n)*?\s*rank\s*: (\d+) .*\n\s*exitcode\s*: (-?\d+)", launcher_stderr
    )
    assert found, launcher_stderr[-3000:]
    return int(found.group(1)), int(found.group(2))


@pytest.mark.slow
def test_ddp_a_full_disk_on_process_0_ends_each_process_with_one_line_naming_it(tiny_benchmark, tmp_path):
    """Process 0 (the only one writing checkpoints) fills the disk; process 1, waiting for it at the save's barrier,
    says why it stops instead of dying of the launcher's SIGTERM after a traceback of the barrier's error."""
    run, (first, second) = _two_process_run(tiny_benchmark, tmp_path, DISK_FULL, *EVERY_STEP)
    cause = _last_line(first)
    assert re.fullmatch(r"error: disk full while writing checkpoint-2 in \S+: .* resume with --resume_from_checkpoint last\.", cause), (
        first[-3000:]
    )
    assert _last_line(second) == f"stopped because process 0 failed: {cause}", second[-3000:]
    assert "Traceback" not in first + second
    assert _root_cause(run.stderr) == (0, 2)  # process 0 ended first, with its own status
    assert assert_checkpoints_complete(run.output_dir) == [1]


@pytest.mark.slow
def test_ddp_an_error_on_process_1_ends_each_process_with_one_line_naming_it(tiny_benchmark, tmp_path):
    """A bug on process 1 keeps its traceback there; process 0, blocked in the step's gradient all-reduce, says why
    it stops."""
    run, (first, second) = _two_process_run(tiny_benchmark, tmp_path, FAIL_ON_PROCESS_1)
    assert _last_line(second).endswith("RuntimeError: injected on process 1 at step 3"), second[-3000:]
    assert _last_line(first) == "stopped because process 1 failed: RuntimeError: injected on process 1 at step 3", first[-3000:]
    assert "Traceback" not in first
    assert _root_cause(run.stderr) == (1, 1)
