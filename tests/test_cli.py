"""Every program answers --help, each console command is its script (the same program, flags and help), and the cli
package's docstring lists every console command."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip vendors
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/_*.py are modules the benchmarks share, not programs
PROGRAMS = sorted((ROOT / "scripts").glob("*.py")) + sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
CONSOLE_COMMANDS = {  # script -> console command ([project.scripts] in pyproject.toml)
    "train_duda.py": "duda-train",
    "evaluate_duda.py": "duda-evaluate",
    "prepare_data.py": "duda-prepare-data",
    "push_to_hub.py": "duda-push",
    "make_synthetic.py": "duda-make-synthetic",
    "pretrain_synthetic.py": "duda-pretrain-synthetic",
    "export_onnx.py": "duda-export-onnx",
    "import_checkpoint.py": "duda-import-checkpoint",
}
ENV = {**os.environ, "COLUMNS": "120", "HF_HUB_OFFLINE": "1"}


def help_command(path: Path) -> list[list[str]]:
    """The commands whose --help the test of `path` reads: the script, and its console command when it has one."""
    command = CONSOLE_COMMANDS.get(path.name)
    return [[sys.executable, str(path)]] + ([[str(Path(sys.executable).parent / command)]] if command else [])


@pytest.fixture(scope="module")
def helps() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """`--help` of every program and console command, run a few at a time (each is a Python start-up and its imports,
    which one core does: the suite's other core would wait)."""
    from concurrent.futures import ThreadPoolExecutor

    commands = [command for path in PROGRAMS for command in help_command(path) if Path(command[-1]).is_file()]

    def run(command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300, check=False)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(map(tuple, commands), pool.map(run, commands)))


def help_text(helps, command: list[str]) -> str:
    done = helps[tuple(command)]
    assert done.returncode == 0, f"{command} --help failed:\n{done.stderr[-3000:]}"
    assert done.stdout.startswith("usage: "), done.stdout[:200]
    return done.stdout


def without_program_name(text: str, name: str) -> str:
    """The help with the program's own name taken out and the layout (which depends on the name's length) ignored."""
    return " ".join(text.replace(f"usage: {name} ", "usage: PROGRAM ", 1).split())


@pytest.mark.slow
@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: str(p.relative_to(ROOT)))
def test_help_works_and_the_console_command_is_the_same_program(path, helps):
    text = help_text(helps, [sys.executable, str(path)])
    command = CONSOLE_COMMANDS.get(path.name)
    if command is None:
        assert path.parent.name == "benchmarks", f"{path.name} is a script without a console command"
        return
    installed = Path(sys.executable).parent / command
    assert installed.is_file(), f"console command {command} is not installed; run pip install -e . again"
    assert without_program_name(help_text(helps, [str(installed)]), command) == without_program_name(text, path.name)


def test_every_console_command_has_its_script():
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = dict(re.findall(r'^(duda-[\w-]+) = "duda_hf\.cli\.(\w+):main"$', pyproject, flags=re.MULTILINE))
    assert declared == {command: Path(script).stem for script, command in CONSOLE_COMMANDS.items()}
    for module in declared.values():
        assert (ROOT / "duda_hf" / "cli" / f"{module}.py").is_file() and (ROOT / "scripts" / f"{module}.py").is_file()


def test_the_cli_package_docstring_lists_every_console_command():
    """duda_hf/cli/__init__.py's table names each program of [project.scripts], with its module and its script."""
    import duda_hf.cli

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts, "pyproject.toml declares no console command"
    rows = {line.split("|")[1].strip(" `"): line for line in duda_hf.cli.__doc__.splitlines() if line.startswith("| `duda-")}
    for command, entry_point in scripts.items():
        module = entry_point.split(":")[0]
        assert command in rows, f"the duda_hf.cli docstring does not list {command} ({entry_point})"
        assert f"`{module}`" in rows[command] and f"`scripts/{module.rpartition('.')[2]}.py`" in rows[command], rows[command]
    assert set(rows) == set(scripts), f"listed but not installed: {sorted(set(rows) - set(scripts))}"


@pytest.mark.slow
def test_duda_train_says_the_teacher_premise_once_after_the_results(tiny_benchmark, tmp_path):
    """The end of a run: the mIoU line, then (where the teacher is not clearly stronger) one note, not two."""
    import json

    from duda_hf.evaluation.report import teacher_premise

    from .conftest import tiny_argv

    done = subprocess.run(
        [sys.executable, "-m", "duda_hf.cli.train_duda", *tiny_argv(tiny_benchmark, tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    premise = teacher_premise(json.loads((tmp_path / "run" / "eval_results.json").read_text()))
    assert premise is not None  # 4 steps from scratch: the teacher is no stronger
    output = done.stdout + done.stderr
    assert output.count("is not clearly stronger") == 1
    lines = done.stdout.splitlines()
    mious = [i for i, line in enumerate(lines) if line.startswith("target-validation mIoU")]
    assert len(mious) == 1 and lines[mious[0] + 1] == f"note: {premise}"


@pytest.mark.slow
def test_the_cpu_recipe_trains_without_a_warning(tiny_benchmark, tmp_path):
    """The README's first command's training path (the CPU recipe, on the tiny benchmark for a few steps, with an
    evaluation and a checkpoint) prints no warning: nothing from transformers (image processors without torchvision,
    the checked Trainer versions), Python or the project."""
    argv = ["--config", str(ROOT / "configs" / "synthetic_cpu.yaml"), "--output_dir", str(tmp_path / "run")]
    argv += ["--source_dataset", tiny_benchmark["source"], "--target_dataset", tiny_benchmark["target"]]
    argv += ["--target_eval_dataset", tiny_benchmark["target_val"], "--crop_size", "64", "--rcs_min_pixels", "50"]
    argv += ["--max_steps", "8", "--eval_steps", "4", "--save_steps", "4", "--logging_steps", "4"]
    env = {**ENV, "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_duda.py"), *argv], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = (done.stdout + done.stderr).replace(str(tmp_path), "RUN")
    found = [line for line in output.splitlines() if re.search(r"warn|deprecat|\[transformers\]", line, re.IGNORECASE)]
    assert not found, "\n".join(found)


@pytest.mark.slow
def test_the_console_shows_short_lines_and_the_log_keeps_everything(tiny_benchmark, tmp_path):
    """One short line per log (loss, its parts, pseudo-label quality, lam_t), the three networks' mIoU at each
    evaluation, the end; no class weights on the console, and every logged value still in the run's history."""
    import json

    from .conftest import tiny_argv

    argv = tiny_argv(tiny_benchmark, tmp_path / "run", "--eval_strategy", "steps", "--eval_steps", "2")
    done = subprocess.run([sys.executable, "-m", "duda_hf.cli.train_duda", *argv], capture_output=True, text=True, env=ENV, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    training = [line for line in lines if re.match(r"step \d+/4  loss ", line)]
    assert len(training) == 4 and all(
        re.fullmatch(
            r"step \d/4  loss [0-9.]+  aux [0-9.]+  student [0-9.]+(  distill [0-9.]+)?  pseudo-labels [0-9.]+%  lam_t [0-9.]+", line
        )
        for line in training
    ), training
    evaluations = [line for line in lines if "target mIoU:" in line and line.startswith("step ")]
    assert [line.split("  ")[0] for line in evaluations] == ["step 2", "step 4"]
    assert all(
        re.fullmatch(r"step \d  target mIoU: student [0-9.]+  auxiliary [0-9.]+  teacher [0-9.]+  \(agreement [0-9.]+%\)", line)
        for line in evaluations
    )
    assert re.search(r"^trained 4 steps in 0:\d\d:\d\d  train_loss [0-9.]+$", done.stdout, re.MULTILINE)
    assert "class_weight" not in done.stdout + done.stderr and "{'loss'" not in done.stdout
    history = json.loads((tmp_path / "run" / "eval_results.json").read_text())["train_history"]
    assert len(history) == 4 and {"class_weight_road", "loss_aux_source", "grad_norm", "learning_rate"} <= set(history[0])
    # the run's pictures: the networks' mIoU over training and the per-class IoU, as PNG files in the run folder
    from PIL import Image

    for name in ("miou_over_training.png", "per_class_iou.png"):
        with Image.open(tmp_path / "run" / "plots" / name) as picture:
            assert picture.format == "PNG" and picture.size[0] > 300
    # the line adds up the logged terms: aux is the auxiliary student's two terms
    first = training[0].split("  ")
    assert float(first[2].split()[1]) == pytest.approx(history[0]["loss_aux_source"] + history[0]["loss_aux_mix"], abs=1e-4)
