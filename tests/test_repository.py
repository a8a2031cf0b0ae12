"""What the repository holds: no large files (generated data, weights and tools' wheels belong outside it); code that
passes the linter and the formatter; an example model card that is what today's code renders from its run."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import load_strict_json

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1_000_000  # bytes
ASSETS: frozenset[str] = frozenset()  # tracked files allowed over the limit (none today)
EXAMPLE_CARD = ROOT / "model_cards" / "examples" / "synthetic_cpu"
EXAMPLE_REPO_ID = "your-org/synthetic_cpu"  # what the first command wrote without --hub_model_id (its output folder)


def oversized(root: Path, names: list[str], limit: int = LIMIT, allowed: frozenset[str] = ASSETS) -> dict[str, int]:
    """The files among `names` (paths relative to `root`) larger than `limit` bytes and not `allowed`."""
    sizes = {name: (root / name).stat().st_size for name in names if (root / name).is_file()}
    return {name: size for name, size in sizes.items() if size > limit and name not in allowed}


def test_no_tracked_file_is_over_1_mb():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    names = [name for name in listed.decode().split("\0") if name]
    assert len(names) > 100  # the listing worked
    assert oversized(ROOT, names) == {}, "tracked files over 1 MB: add them to .gitignore (or, for an asset, to ASSETS)"


def test_the_size_check_finds_a_large_file_and_lets_an_asset_pass(tmp_path):
    (tmp_path / "tool.whl").write_bytes(b"\0" * (LIMIT + 1))
    (tmp_path / "small.txt").write_text("x")
    assert oversized(tmp_path, ["tool.whl", "small.txt", "gone.bin"]) == {"tool.whl": LIMIT + 1}
    assert oversized(tmp_path, ["tool.whl"], allowed=frozenset({"tool.whl"})) == {}


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_passes(command):
    # CI's lint: .ci/run builds the one environment (the README's test command) and the suite runs the ruff pinned in
    # the `dev` extra, with the settings in pyproject.toml
    done = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"ruff {' '.join(command)}:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"


def test_the_example_card_is_what_the_code_renders_from_its_run(tmp_path):
    """model_cards/examples/synthetic_cpu/README.md, rendered again from the run's eval_results.json and the student's
    preprocessor_config.json (its evaluation size) beside it, with today's template and `build_model_card`.

    After a change to either, `DUDA_WRITE_EXAMPLE_CARDS=1` writes the example again (review its diff)."""
    from duda_hf.export.model_card import build_model_card, card_files

    results = load_strict_json(EXAMPLE_CARD / "eval_results.json")
    size = load_strict_json(EXAMPLE_CARD / "preprocessor_config.json")["size"]
    card = build_model_card(results, EXAMPLE_REPO_ID, eval_size_hw=(size["height"], size["width"]), **card_files(EXAMPLE_CARD))
    card.save(tmp_path / "README.md")  # as the run saves it
    rendered = (tmp_path / "README.md").read_text(encoding="utf-8")
    if os.environ.get("DUDA_WRITE_EXAMPLE_CARDS") == "1":
        (EXAMPLE_CARD / "README.md").write_text(rendered, encoding="utf-8")
    assert rendered == (EXAMPLE_CARD / "README.md").read_text(encoding="utf-8"), (
        "the template or build_model_card changed: write the example again (model_cards/README.md says how)"
    )
    pictures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", rendered)
    assert pictures == ["plots/miou_over_training.png", "plots/per_class_iou.png"]
    assert all((EXAMPLE_CARD / path).is_file() for path in pictures)
    assert not re.search(r"\{\{|\{%|\}\}|%\}", rendered), "a placeholder the template left unfilled"
