"""The project documents itself: every link and file reference in the README, docs/, the recipes and the code's
docstrings and comments resolves inside the repository (a clone has nothing beside it)."""

import functools
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MARKDOWN_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s)\]>`'\"]+")
# a run of path characters: `docs/method.md`, `../x/Y.md`, `configs/*.yaml`, `spaces/duda-demo/`
PATH_TOKEN = re.compile(r"[\w.~/*<>{}-]+")
FILE_SUFFIXES = (".md", ".py", ".yaml", ".yml", ".toml", ".json", ".txt", ".png", ".jpg")
DOC_NAME = re.compile(r"^[A-Z][A-Z0-9_-]*\.md$")  # README.md, METHOD.md, LABELS.md: a document, by name


# What the reference check reads besides the README and the Space's README: (folder, pattern), each of which must
# match files (`test_every_scanned_pattern_matches_files`), so that a folder that moves is not silently left unchecked.
SCANNED = (
    ("docs", "*.md"),
    ("configs", "*.yaml"),
    ("model_cards", "**/*.md"),  # the model card template, the folder's README and the example card
    *((folder, "**/*.py") for folder in ("duda_hf", "scripts", "benchmarks", "spaces")),
)


def scanned_files() -> list[Path]:
    """The README, docs/, the Space's README, the card template, the recipes and the code outside tests/."""
    files = [ROOT / "README.md", ROOT / "spaces" / "duda-demo" / "README.md"]
    for folder, pattern in SCANNED:
        files += sorted((ROOT / folder).glob(pattern))
    return files


def test_every_scanned_pattern_matches_files():
    empty = [f"{folder}/{pattern}" for folder, pattern in SCANNED if not list((ROOT / folder).glob(pattern))]
    assert empty == [], f"these patterns match no file, so nothing there is checked: {empty}"
    assert {ROOT / "model_cards" / "duda_student.md", ROOT / "model_cards" / "examples" / "synthetic_cpu" / "README.md"} <= set(
        scanned_files()
    )


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Anchors of the headings of a Markdown file (outside fenced code)."""
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.add(slug(line.lstrip("#")))
    return found


@functools.cache
def repository_names() -> tuple[set[str], set[str]]:
    """The top-level entries of the repository (tracked or to be: `git ls-files` with untracked files that are not
    ignored, so that generated folders such as `outputs/` or `pretrained_synthetic/` in a working copy are not checked
    as they are not in a clone), and the name of every file in it (environments and caches aside)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    top_level = {path.split("/", 1)[0] for path in listed}
    names = set()
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [
            d for d in subfolders if not d.startswith((".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"))
        ]
        names.update(files)
    return top_level, names


def inside(path: Path) -> bool:
    return path.resolve().is_relative_to(ROOT)


def unresolved(text: str, source: Path) -> list[str]:
    """References in `text` (from the file `source`) that do not resolve inside the repository."""
    problems = []
    top_level, names = repository_names()
    for target in MARKDOWN_LINK.findall(text):
        if URL.match(target) or target.startswith("mailto:"):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (source.parent / file_part) if file_part else source
        if not (inside(linked) and linked.exists()):
            problems.append(f"link ({target}): no such file in the repository")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"link ({target}): no heading with that anchor")
    for token in PATH_TOKEN.findall(URL.sub(" ", text)):
        token = token.rstrip(".,:;")
        if DOC_NAME.match(Path(token).name) and Path(token).name not in names:
            problems.append(f"'{token}': no document of that name in the repository")
        elif token.startswith(("../", "./")):
            if not inside(source.parent / token) or not (source.parent / token).exists():
                problems.append(f"'{token}': does not resolve inside the repository")
        elif "/" in token and token.split("/")[0] in top_level and (token.endswith(FILE_SUFFIXES) or token.endswith("/")):
            if any(mark in token for mark in "<>{}"):
                continue  # a pattern with placeholders, not a file
            if not (list(ROOT.glob(token.rstrip("/"))) if "*" in token else (ROOT / token).exists()):
                problems.append(f"'{token}': no such file or folder in the repository")
    return problems


def test_the_readme_is_short_and_links_every_docs_page():
    """The README is read in five minutes (at most 12,000 characters) and everything else is one link away: it links
    every page of docs/ (read from the folder, so a new page cannot be left out)."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 12_000, f"the README has {len(readme)} characters; move detail into a docs/ page"
    pages = sorted(path.name for path in (ROOT / "docs").glob("*.md"))
    assert len(pages) >= 10, pages
    assert [name for name in pages if f"(docs/{name})" not in readme] == []


def test_the_readme_maps_every_top_level_folder():
    """The README's table of the repository names each tracked top-level folder (from git, not a kept list)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The repository", 1)[1].split("\n## ", 1)[0]
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = {path.split("/", 1)[0] for path in listed if "/" in path and not path.startswith(".")}
    assert {"duda_hf", "scripts", "spaces", "model_cards", "tests"} <= folders
    assert sorted(name for name in folders if f"`{name}/`" not in table) == []


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_reference_resolves_inside_the_repository(path):
    assert unresolved(path.read_text(), path) == []


def test_the_checker_catches_references_outside_the_repository():
    text = (
        "The method is in [`../shared/docs/METHOD.md`](../shared/docs/METHOD.md); tables in LABELS.md section 3.\n"
        "See `docs/missing.md`, [Datasets](#no-such-heading), [x](docs/method.md#nor-this) and `configs/*.toml`.\n"
        "Fine: `docs/method.md`, [SYNTHIA](docs/datasets.md#synthia), `student/README.md`, https://x.org/a/METHOD.md.\n"
    )
    problems = unresolved(text, ROOT / "README.md")
    assert problems == [
        "link (../shared/docs/METHOD.md): no such file in the repository",
        "link (#no-such-heading): no heading with that anchor",
        "link (docs/method.md#nor-this): no heading with that anchor",
        "'../shared/docs/METHOD.md': no document of that name in the repository",
        "'../shared/docs/METHOD.md': no document of that name in the repository",
        "'LABELS.md': no document of that name in the repository",
        "'docs/missing.md': no such file or folder in the repository",
        "'configs/*.toml': no such file or folder in the repository",
    ]
