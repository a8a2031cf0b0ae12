"""What the benchmark scripts need before they start, in one place (imported by the scripts beside it; not a script).

A fresh clone has none of the generated folders (.gitignore). A benchmark builds what it can build by itself and
says so on stdout: the synthetic benchmark (`scripts/make_synthetic.py`, about 15 s) and the pretrained pair
(`scripts/pretrain_synthetic.py`, about 25 minutes on 2 CPU cores, cached; the quality benchmarks have always run
it first). Anything else it needs and cannot make (a trained student, a CUDA GPU, an optional package, a file the
user named) ends it with one line on stderr, `<script>: error: <what is missing>; <the command that makes it>`,
and exit status 2, as the project's own programs end on a problem they explain (duda_hf/cli/errors.py): no
traceback.
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from duda_hf.data.synthetic import SYNTHETIC_BENCHMARKS  # name -> (folder, scripts/make_synthetic.py flags)

ROOT = Path(__file__).resolve().parents[1]
EXIT_MISSING = 2
SPLITS = ("source", "target", "target_val")
PRETRAINED_FOLDER = "pretrained_synthetic"
PRETRAINED_NETWORKS = ("tiny", "tiny-wide")
ONNX_INSTALL = 'pip install -e ".[onnx]"'
SPACE_INSTALL = 'pip install -e ".[space]"'


def fail(message: str) -> NoReturn:
    """End the program: `message` as one line on stderr, exit status 2."""
    print(f"{Path(sys.argv[0]).name}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_MISSING)


def command_line(args: list[str]) -> str:
    """`python ARGS` as a user types it in the repository's root."""
    return shlex.join(["python", *args])


def _run(args: list[str], what: str, *, show_output: bool) -> None:
    """`python ARGS` in the repository's root; its failure ends this program with one line naming the command."""
    try:
        done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=not show_output, text=True, check=False)
    except KeyboardInterrupt:  # Ctrl-C: the command stops too (pretraining keeps its checkpoint); no traceback
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    if done.returncode != 0:
        last = (done.stderr or "").strip().splitlines()[-1:]
        cause = f": {last[0]}" if last else ""
        fail(f"{what} failed (exit status {done.returncode}){cause}; run `{command_line(args)}` to see why")


def synthetic_benchmark(name: str = "dusk") -> Path:
    """The synthetic benchmark's folder (`source`, `target`, `target_val`), built first when it is missing.

    Always goes through `scripts/make_synthetic.py`, which reuses a folder made with the same settings and
    rebuilds one made by other settings or another generator version.
    """
    folder, flags = SYNTHETIC_BENCHMARKS[name]
    args = ["scripts/make_synthetic.py", "--out", folder, *flags]
    present = (ROOT / folder / "synthetic_meta.json").is_file()
    if not present:
        print(f"{folder}/ is missing: building it with `{command_line(args)}` (about 15 s) ...", flush=True)
    started = time.monotonic()
    _run(args, f"building {folder}/", show_output=False)
    if not present:
        print(f"built {folder}/ in {time.monotonic() - started:.0f} s", flush=True)
    return ROOT / folder


def synthetic_split(path: str | Path, flag: str) -> Path:
    """A dataset folder a benchmark reads: built when it is a split of a synthetic benchmark, else it must exist."""
    path = Path(path)
    for name, (folder, _flags) in SYNTHETIC_BENCHMARKS.items():
        if path.name in SPLITS and path.parent.resolve() == (ROOT / folder).resolve():
            synthetic_benchmark(name)
            return path
    if not path.is_dir():
        fail(
            f"{flag} {path} is not a dataset folder (datasets' save_to_disk); pass one, or build the synthetic benchmark "
            f"with `{command_line(['scripts/make_synthetic.py', '--out', 'data_synthetic'])}` and pass data_synthetic/<split>"
        )
    return path


def needs_pretrained_pair(recipe: str | Path) -> bool:
    """True when a training recipe starts from the pretrained pair (a value under pretrained_synthetic/)."""
    import yaml

    path = ROOT / recipe if not Path(recipe).is_absolute() else Path(recipe)
    if not path.is_file():
        recipes = ", ".join(sorted(f"configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")))
        fail(f"the recipe {recipe} does not exist; pass one of {recipes}")
    values = (yaml.safe_load(path.read_text()) or {}).values()
    return any(isinstance(value, str) and value.startswith(f"{PRETRAINED_FOLDER}/") for value in values)


def pretrained_pair() -> Path:
    """`pretrained_synthetic/tiny` and `pretrained_synthetic/tiny-wide`, pretrained first when missing.

    `scripts/pretrain_synthetic.py` reuses folders made with the same settings and continues an interrupted run; a
    first run shows its own progress bar (about 25 minutes on 2 CPU cores).
    """
    args = ["scripts/pretrain_synthetic.py"]
    present = all((ROOT / PRETRAINED_FOLDER / name / "pretraining.json").is_file() for name in PRETRAINED_NETWORKS)
    if not present:
        print(
            f"{PRETRAINED_FOLDER}/ is missing: pretraining {' and '.join(PRETRAINED_NETWORKS)} with `{command_line(args)}` "
            "first (about 25 minutes on 2 CPU cores; stopped, it continues where it was) ...",
            flush=True,
        )
    _run(args, "pretraining the pair", show_output=not present)
    return ROOT / PRETRAINED_FOLDER


def require_packages(*names: str, install: str) -> None:
    """End with one line naming the install command when one of the Python packages `names` is missing."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        fail(f"this benchmark needs {', '.join(missing)}, not installed here; run `{install}`")


INPUT_SIZES = [(512, 1024), (1024, 2048)]  # (H, W): DAFormer's Cityscapes evaluation size and the full image


def add_size_flag(parser) -> None:
    """`--size H W`, repeatable, for the benchmarks that time inference; `args.size or INPUT_SIZES` is the list."""
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        action="append",
        metavar=("H", "W"),
        help="an input size, H W, height first; repeat it for more (default: 512 1024 and 1024 2048)",
    )
