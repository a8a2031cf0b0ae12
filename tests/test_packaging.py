"""The package works without the repository: a wheel built from it, installed into a fresh environment, trains
(through `accelerate launch -m`), writes the model card, evaluates and prepares data with its console commands. The
wheel also builds the way pip builds it for users (in an isolated environment that downloads its build requirements),
and the model card templates, kept at the top of the repository (`model_cards/`), ship in it as `duda_hf.model_cards`."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from .conftest import load_strict_json, tiny_argv

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip vendors
    from pip._vendor import tomli as tomllib

# every test here builds or installs the package: the slow lane (docs/contributing.md)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_each_dependency_line_carries_its_own_comment():
    # a comment belongs to the line of the requirement it explains (opencv: SYNTHIA labels; matplotlib: plots)
    lines = (ROOT / "pyproject.toml").read_text().split("dependencies = [", 1)[1].split("]", 1)[0].splitlines()
    comments = {line.split('"')[1]: line.split("#", 1)[1].strip() for line in lines if line.strip().startswith('"') and "#" in line}
    assert all(comment.count("#") == 0 for comment in comments.values()), comments
    assert "SYNTHIA" in comments["opencv-python-headless>=4.8"] and "plots" in comments["matplotlib>=3.7"]


def run(command: list[str], env: dict, cwd: Path, timeout: int = 600) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{command[:3]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def copy_sources(source: Path) -> Path:
    """What the source distribution holds (pyproject.toml, README.md, the package and the card templates' folder),
    copied to `source`, away from the checkout's build folders and environments."""
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("duda_hf", "model_cards"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return source


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_package_list_names_every_folder_of_the_package_and_maps_the_card_templates():
    # pyproject.toml lists the packages (`packages.find` cannot map model_cards/ into the package): a folder of
    # duda_hf with Python files that the list leaves out would be missing from the wheel while the editable install,
    # which reads the folder, still works
    setuptools = pyproject()["tool"]["setuptools"]
    folders = {
        ".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "duda_hf").rglob("*.py") if "__pycache__" not in path.parts
    }
    assert set(setuptools["packages"]) - {"duda_hf.model_cards"} == folders, "add the new folder to pyproject.toml's packages"
    # the mapping as written (the isolated-build test below checks what it puts in the wheel)
    assert setuptools["package-dir"] == {"duda_hf.model_cards": "model_cards"}
    assert setuptools["package-data"] == {"duda_hf.model_cards": ["*.md"]}
    assert setuptools["exclude-package-data"] == {"duda_hf.model_cards": ["README.md"]}  # the folder's description
    assert sorted(path.name for path in (ROOT / "model_cards").glob("*.md")) == ["README.md", "duda_student.md"]


def test_the_build_requires_setuptools_only():
    # an isolated build installs these into a fresh environment on every install from source (no linter there)
    assert pyproject()["build-system"]["requires"] == ["setuptools>=77"]


def test_a_checkout_reads_the_templates_from_model_cards():
    # `pip install -e .` (the README's commands and CI) maps duda_hf.model_cards onto the repository's folder: an edit
    # of the template shows in the next card without reinstalling
    import importlib.util

    from duda_hf.export import model_card

    # through the install's mapping, not the fallback for a checkout never installed (which reads the same file)
    assert Path(importlib.util.find_spec("duda_hf.model_cards").origin).resolve() == ROOT / "model_cards" / "__init__.py"
    assert Path(str(model_card.TEMPLATE)).resolve() == ROOT / "model_cards" / "duda_student.md"


def test_a_checkout_that_was_never_installed_reads_the_templates_beside_the_package(tmp_path):
    # the package on sys.path (PYTHONPATH=. python scripts/...) with no install to map duda_hf.model_cards: `python -S`
    # reads no .pth file, so the editable install's finder is not there
    paths = [str(ROOT), *dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])]
    code = f"import sys; sys.path[:0] = {paths!r}; from duda_hf.export import model_card as card; print(card.TEMPLATE)"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    assert Path(run([sys.executable, "-S", "-c", code], env, tmp_path).strip()) == ROOT / "model_cards" / "duda_student.md"


def test_an_isolated_build_gives_a_wheel_with_the_templates_and_not_the_examples(tmp_path):
    """The build pip runs for a user (`pip wheel .`, build isolation: setuptools downloaded from the registry, as
    `[build-system].requires` says) makes a wheel holding the package, the evaluate module and the card template, and
    neither model_cards/README.md nor the example cards."""
    source = copy_sources(tmp_path / "source")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)], env, tmp_path)
    (wheel,) = (tmp_path / "dist").glob("duda_hf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "duda_hf/__init__.py",
        "duda_hf/export/model_card.py",
        "duda_hf/evaluation/streaming_miou/streaming_miou.py",
        "duda_hf/model_cards/__init__.py",
        "duda_hf/model_cards/duda_student.md",
    } <= names
    for package in pyproject()["tool"]["setuptools"]["packages"]:
        assert any(name.startswith(package.replace(".", "/") + "/") for name in names), f"{package} is not in the wheel"
    assert not [name for name in names if not name.startswith(("duda_hf/", "duda_hf-"))], "only the package and its metadata"
    assert not [name for name in names if "README.md" in name or "examples" in name or name.endswith((".png", ".json"))]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """A fresh virtual environment holding duda-hf from a wheel built here; its dependencies come from this one.

    Returns `(environment variables, bin folder, work folder)`; the work folder is outside the repository.
    """
    root = tmp_path_factory.mktemp("wheel")
    source = copy_sources(root / "source")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(root / "dist")]
    run([*build, str(source)], env, root)
    (wheel,) = (root / "dist").glob("duda_hf-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], env, root)
    bin_dir = venv / "bin"
    site_packages = Path(
        run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env, root).strip()
    )
    # the dependencies (torch, transformers, ...) from this environment; its .pth files (the editable duda_hf) are not read
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site_packages / "dependencies.pth").write_text("".join(f"{path}\n" for path in paths))
    run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], env, root)
    work = root / "work"
    work.mkdir()
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf_home"), COLUMNS="120")
    return env, bin_dir, work


def test_the_wheel_installs_a_self_contained_package(installed_wheel):
    env, bin_dir, work = installed_wheel
    code = (
        "import duda_hf, duda_hf.export.model_card as card, duda_hf.evaluation as evaluation, os\n"
        "print(duda_hf.__file__, card.TEMPLATE, os.path.isfile(os.path.join(evaluation.METRIC_PATH, 'streaming_miou.py')))\n"
    )
    location, template, metric = run([str(bin_dir / "python"), "-c", code], env, work).split()
    assert Path(location).is_relative_to(bin_dir.parent) and not Path(location).is_relative_to(ROOT)
    assert Path(template) == Path(location).parent / "model_cards" / "duda_student.md" and Path(template).is_file()
    assert metric == "True"
    for command in ("duda-train", "duda-evaluate", "duda-prepare-data", "duda-push", "duda-make-synthetic"):
        assert run([str(bin_dir / command), "--help"], env, work).startswith(f"usage: {command} ")


def test_the_installed_package_trains_by_module_writes_the_card_and_evaluates(installed_wheel):
    env, bin_dir, work = installed_wheel
    run(
        [
            str(bin_dir / "duda-make-synthetic"),
            "--out",
            "data",
            "--num_source",
            "8",
            "--num_target",
            "8",
            "--num_target_val",
            "3",
            "--height",
            "64",
            "--width",
            "128",
        ],
        env,
        work,
    )
    benchmark = {name: str(work / "data" / name) for name in ("source", "target", "target_val")}
    launch = [
        str(bin_dir / "python"),
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "duda_hf.cli.train_duda",
    ]
    output = run([*launch, *tiny_argv(benchmark, work / "run", "--max_steps", "2", "--hub_model_id", "org/wheel-student")], env, work)
    assert "target-validation mIoU (3 images)" in output
    results = load_strict_json(work / "run" / "eval_results.json")
    card = ModelCard.load(work / "run" / "student" / "README.md")
    student = results["metrics"]["student"]
    assert f"| student (this model) | **{100 * student['mIoU']:.2f}** |" in card.text  # the template ships in the wheel
    assert "![Target mIoU of the networks over training](plots/miou_over_training.png)" in card.text
    assert (work / "run" / "student" / "plots" / "miou_over_training.png").is_file()
    assert 'pipeline("image-segmentation", model="org/wheel-student")' in card.text
    run([str(bin_dir / "duda-evaluate"), "--model", "run/student", "--dataset", "data/target_val", "--output_dir", "scores"], env, work)
    assert load_strict_json(work / "scores" / "eval_results.json")["settings"]["num_images"] == 3
