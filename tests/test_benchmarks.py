"""Every benchmark script on a fresh clone: the repository's files (tracked, and new ones not ignored) copied to a
folder without any generated one (data_synthetic/, pretrained_synthetic/, outputs/ ...), as a user gets it.

Each script answers --help, and its real invocation (at its smallest sizes where the default runs for minutes)
either builds what it needs and runs (the synthetic benchmark, `benchmarks/_prerequisites.py`) or ends with one
line on stderr naming what is missing and the command that makes it, exit status 2: never a traceback.

The scripts that read the synthetic benchmark run in order on the clone's own `data_synthetic/` (the first one,
onnx_speed.py, finds none and builds it); the ones that need nothing generated run meanwhile in a second lane.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# every test here runs the benchmark scripts on a fresh copy of the repository: the slow lane (docs/contributing.md)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("data_synthetic", "data_synthetic_night", "data_synthetic_pretrain", "outputs", "pretrained_synthetic")
SCRIPTS = sorted(path.stem for path in (ROOT / "benchmarks").glob("*.py") if not path.name.startswith("_"))
# The cheapest real invocation of each script, and what it must end with: "runs" (exit 0) or "one line" (exit 2, one
# line on stderr that names the command to run). onnx_speed.py, which meets the fresh clone first and builds its
# data_synthetic/, has tests of its own; these readers of the synthetic benchmark run after it, in the test lane.
QUALITY = ["--seeds", "0", "--rows", "random_duda_paper", "--output_root", "outputs/tiny", "--", "--max_steps", "4"]
QUALITY_RUN = "outputs/tiny/random_duda_paper_seed0"  # a 4-step duda run from random init, on configs/synthetic_cpu.yaml
READERS = {
    "quality_synthetic": (QUALITY, "runs"),
    # the next two read that run ("runs whose eval_results.json exists are reused"): their training runs are
    # train_duda.py's, as quality_synthetic's, and take minutes at their own settings
    "distillation_gap": (["--rows", "random_duda_paper", "--jobs", "1", "--output_root", "outputs/tiny"], "runs"),
    "teacher_trajectory": (["--alphas", "0.99", "--output_root", "outputs/trajectory"], "runs"),
    "eval_speed": (["--cases", "synthetic", "--threads", "1", "--workers", "0", "--repeats", "1"], "runs"),
}
# The scripts that need nothing generated: they run in a second lane while the readers run.
OTHERS = {
    "gpu_check": ([], "one line"),  # without CUDA: nothing to run
    "checkpoint_size": ([], "runs"),  # the paper's pair on the meta device: no weights
    "metric_speed": (["--maps", "2", "--height", "64", "--width", "64", "--repeats", "1"], "runs"),
    "inference_speed": (["--size", "32", "64", "--models", "tiny", "--repeats", "1"], "runs"),
    "prepare_throughput": (["--count", "2", "--num_proc", "1"], "runs"),
    "step_cost": (["--shapes", "tiny-128", "--steps", "1", "--warmup", "0"], "runs"),
    "space_load": (["--requests", "1", "--concurrency", "1", "--size", "32", "64", "--large", "32", "64"], "runs"),
}
# Scripts whose real invocation is out of the suite's reach: their --help is tested, and why not more is said here.
NOT_RUN = {
    "first_command": "a fresh clone's installs from the package registry and a 3-minute training",
}
TIMEOUT = 600


def environment(clone: Path, tmp: Path) -> dict:
    """The clone's own duda_hf (not the checkout's editable install), one thread, offline, temporary files in `tmp`."""
    return {
        **os.environ,
        "PYTHONPATH": str(clone),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(tmp),
        "COLUMNS": "120",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }


def benchmark(clone: Path, tmp: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, f"benchmarks/{script}.py", *args]
    return subprocess.run(command, cwd=clone, env=environment(clone, tmp), capture_output=True, text=True, timeout=TIMEOUT, check=False)


def check(done: subprocess.CompletedProcess, expected: str) -> None:
    """Exit status, no traceback, and for a missing prerequisite one line that names the command making it."""
    output = f"exit status {done.returncode}\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, output
    if expected == "runs":
        assert done.returncode == 0, output
    else:
        assert done.returncode == 2, output
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(r"`python [^`]+`", lines[0]), output


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The repository as a fresh clone has it (after a commit of the files not ignored), in a temporary folder."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    folder = tmp_path_factory.mktemp("clone")
    for name in {entry.decode() for entry in listed.split(b"\0") if entry}:
        source = ROOT / name
        if source.is_file():  # not a file deleted in the working tree
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    assert not [name for name in GENERATED if (folder / name).exists()], "a generated folder is tracked"
    return folder


@pytest.fixture(scope="module", autouse=True)
def other_lane(clone, tmp_path_factory):
    """The scripts that need nothing generated, started with the first test and run one after another beside the test
    lane (two processes at a time); each test of theirs waits for its own."""
    import torch

    tmp = tmp_path_factory.mktemp("other_lane")
    cuda = torch.cuda.is_available()  # gpu_check then runs the whole GPU path, for minutes: not here
    pool = ThreadPoolExecutor(1)
    runs = {
        name: pool.submit(benchmark, clone, tmp, name, *args) for name, (args, _) in OTHERS.items() if not (cuda and name == "gpu_check")
    }
    yield runs
    pool.shutdown(cancel_futures=True)


def test_every_benchmark_script_has_its_invocation_here():
    assert sorted({"onnx_speed", *READERS, *OTHERS, *NOT_RUN}) == SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(clone, tmp_path, script):
    done = benchmark(clone, tmp_path, script, "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: "), done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_onnx_speed_builds_the_synthetic_benchmark_on_a_fresh_clone(clone, tmp_path):
    """The script that once ended in a FileNotFoundError: it builds data_synthetic/, reads its 32 calibration images
    and goes on to the exports (minutes, even at the smallest size: stopped there)."""
    assert not (clone / "data_synthetic").exists()
    stdout_path, stderr_path = tmp_path / "stdout", tmp_path / "stderr"
    command = [sys.executable, "benchmarks/onnx_speed.py", "--size", "32", "64", "--repeats", "1", "--threads", "1"]
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        process = subprocess.Popen(command, cwd=clone, env=environment(clone, tmp_path), stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + TIMEOUT
        while process.poll() is None and "calibration: " not in stdout_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        still_running = process.poll() is None
        printed, errors = stdout_path.read_text(), stderr_path.read_text()  # before it is stopped
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # its temporary folder is removed on the way out
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert still_running, f"it ended (exit status {process.returncode}) before its exports:\n{printed[-2000:]}\n{errors[-3000:]}"
    assert "Traceback" not in errors, errors[-3000:]
    lines = printed.splitlines()
    assert (
        lines[0] == "data_synthetic/ is missing: building it with `python scripts/make_synthetic.py --out data_synthetic` (about 15 s) ..."
    )
    assert re.fullmatch(r"built data_synthetic/ in \d+ s", lines[1]), lines
    assert lines[2].startswith(f"calibration: 32 images of {clone / 'data_synthetic' / 'target'}"), lines
    assert (clone / "data_synthetic" / "synthetic_meta.json").is_file()


def test_onnx_speed_names_the_command_for_a_missing_student(clone, tmp_path):
    done = benchmark(clone, tmp_path, "onnx_speed", "--student_dir", "outputs/nowhere/student")
    check(done, "one line")
    assert "python scripts/train_duda.py --config configs/synthetic_cpu.yaml --max_steps 300" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("script", list(READERS))
def test_a_reader_of_the_synthetic_benchmark_runs(clone, tmp_path, script):
    results = clone / QUALITY_RUN / "eval_results.json"
    if script in ("distillation_gap", "teacher_trajectory") and not results.is_file():
        check(benchmark(clone, tmp_path, "quality_synthetic", *QUALITY), "runs")  # the run they read (when run alone)
    if script == "teacher_trajectory":  # as its run for ema_alpha 0.99 on the default recipe
        (clone / "outputs" / "trajectory" / "synthetic_cpu_alpha0.99_seed0").mkdir(parents=True)
        shutil.copy2(results, clone / "outputs" / "trajectory" / "synthetic_cpu_alpha0.99_seed0")
    args, expected = READERS[script]
    done = benchmark(clone, tmp_path, script, *args)
    check(done, expected)
    assert (clone / "data_synthetic" / "synthetic_meta.json").is_file()


@pytest.mark.parametrize("script", list(OTHERS))
def test_a_script_that_needs_nothing_generated_runs(other_lane, script):
    if script not in other_lane:
        pytest.skip("CUDA is present: gpu_check.py runs the GPU path for minutes")
    done = other_lane[script].result(timeout=TIMEOUT)
    check(done, OTHERS[script][1])
    if script == "gpu_check":
        assert "needs a CUDA GPU" in done.stderr and "python benchmarks/gpu_check.py" in done.stderr


def test_the_first_commands_phases_name_functions_that_exist():
    """benchmarks/first_command.py splits the profiled training by the cumulative time of named functions: each still
    exists where the script looks for it (a function that moved would count as 0 s, silently)."""
    import inspect

    import transformers

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import first_command
    finally:
        sys.path.pop(0)
    for phase, places in first_command.PHASES.items():
        for file_suffix, function in places:
            if file_suffix.startswith("duda_hf/"):
                source = (ROOT / file_suffix).read_text()
                assert re.search(rf"^\s*def {function}\(", source, re.MULTILINE), f"{phase}: no {function} in {file_suffix}"
            else:
                assert file_suffix == "transformers/trainer.py", file_suffix
                found = inspect.getsourcefile(getattr(transformers.Trainer, function))
                assert found.replace(os.sep, "/").endswith(file_suffix), f"{phase}: Trainer.{function} is in {found}"
