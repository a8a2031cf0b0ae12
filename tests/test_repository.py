"""What the repository holds: no large files (generated data, weights and tools' wheels belong outside it)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1_000_000  # bytes
ASSETS: frozenset[str] = frozenset()  # tracked files allowed over the limit (none today)


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
