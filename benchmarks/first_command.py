"""The README's first set-up command from a fresh clone, timed part by part, and where its training's time goes.

    python benchmarks/first_command.py [--threads N] [--no-profile] [--keep DIR]

1. Clones this repository's committed HEAD into a temporary folder (a fresh clone: no virtual environment, no
   data, no outputs) and runs the README's first command there, read from README.md, part by part in one shell
   (each `&&`-joined part timed: the virtual environment, the torch install, the package install, the benchmark
   build, the training with its evaluations and export). `--threads N` sets OMP_NUM_THREADS for the whole command
   (torch's intra-op threads; default: unset, torch takes one thread per core).
2. Unless `--no-profile`: runs the training part once more under cProfile, in the same clone, and splits its time
   into start-up (arguments, data, networks, checks), training steps, evaluations, checkpoints and export (the
   cumulative time of the functions that do each). cProfile slows Python-heavy code, so read the split as shares of
   the profiled run, and the timed command of step 1 as the wall time.

Prints the command's own last lines (the mIoU line), the seconds of each part and the split, and writes
benchmarks/results/first_command.json. Needs the network of a fresh install (the package registries).
"""

from __future__ import annotations

import argparse
import os
import platform
import pstats
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from duda_hf.jsonio import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "first_command.json"
MARK = "@@part"

# (phase, (file suffix, function name) whose cumulative time is that phase's); "training steps" is the training
# loop's time less the evaluations and checkpoints inside it, "other" what the process spent outside run_training
# (imports, argument parsing) and in run_training outside these.
PHASES = {
    "start-up (data, networks, checks)": [("duda_hf/cli/training_run.py", "build_trainer")],
    "training loop": [("transformers/trainer.py", "train")],
    "evaluations": [("duda_hf/training/trainer_evaluation.py", "evaluate")],
    "checkpoints": [("duda_hf/training/trainer.py", "_save_checkpoint")],
    "export (folders, plots, card)": [
        ("duda_hf/export/network.py", "export_network"),
        ("duda_hf/cli/training_run.py", "write_plots"),
        ("duda_hf/export/model_card.py", "build_model_card"),
    ],
    "process": [("duda_hf/cli/train_duda.py", "main")],
}


def first_command() -> str:
    """The README's first set-up command (the first ```bash block that starts a virtual environment)."""
    commands = re.findall(r"```bash\n(python3 -m venv[^\n]*)\n```", (ROOT / "README.md").read_text())
    return commands[0]


def run_timed(command: str, clone: Path, env: dict) -> tuple[list[dict], str]:
    """Runs the `&&`-joined parts of `command` in one bash in `clone`, timing each; returns the parts and the output."""
    parts = [part.strip() for part in command.split("&&")]
    script = ["set -e"]
    for index, part in enumerate(parts):
        script += [f'echo "{MARK} {index} start $(date +%s.%N)"', part, f'echo "{MARK} {index} end $(date +%s.%N)"']
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=clone, env=env, capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        sys.exit(f"first_command.py: error: the command failed (exit status {done.returncode}):\n{output[-3000:]}")
    times: dict[int, dict[str, float]] = {}
    for index, what, stamp in re.findall(rf"^{MARK} (\d+) (start|end) ([\d.]+)$", done.stdout, re.MULTILINE):
        times.setdefault(int(index), {})[what] = float(stamp)
    timed = [{"part": part, "seconds": round(times[index]["end"] - times[index]["start"], 1)} for index, part in enumerate(parts)]
    shown = "\n".join(line for line in done.stdout.splitlines() if not line.startswith(MARK))
    return timed, shown


def cumulative(stats: pstats.Stats, file_suffix: str, function: str) -> float:
    """The cumulative seconds of one function in a profile (0 if it never ran)."""
    found = [
        entry[3]
        for (filename, _line, name), entry in stats.stats.items()  # type: ignore[attr-defined]
        if name == function and filename.replace(os.sep, "/").endswith(file_suffix)
    ]
    return max(found, default=0.0)


def profile_training(training_part: str, clone: Path, env: dict) -> dict[str, float]:
    """The training part once more under cProfile (to another output folder): seconds per phase."""
    args = shlex.split(training_part)
    assert args[0] == "python", args
    profile = clone / "first_command.prof"
    command = [str(clone / ".venv" / "bin" / "python"), "-m", "cProfile", "-o", str(profile), *args[1:]]
    command += ["--output_dir", "outputs/first_command_profiled"]
    done = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"first_command.py: error: the profiled training failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return phases(pstats.Stats(str(profile)))


def phases(stats: pstats.Stats) -> dict[str, float]:
    """Seconds per phase of a profiled training run (PHASES)."""
    seconds = {phase: sum(cumulative(stats, *where) for where in places) for phase, places in PHASES.items()}
    seconds["training steps"] = seconds["training loop"] - seconds["evaluations"] - seconds["checkpoints"]
    seconds["other (imports, arguments, final evaluation)"] = seconds["process"] - sum(
        seconds[phase] for phase in ("start-up (data, networks, checks)", "training loop", "export (folders, plots, card)")
    )
    return {phase: round(value, 1) for phase, value in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the command (default: unset)")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profiled training run")
    parser.add_argument("--keep", type=Path, default=None, help="clone into this folder and keep it")
    args = parser.parse_args()
    command = first_command()
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as temporary:
        clone = args.keep or Path(temporary) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True, check=True).stdout.strip()
        started = time.monotonic()
        parts, output = run_timed(command, clone, env)
        total = round(time.monotonic() - started, 1)
        print(output.strip().splitlines()[-2] if output.strip() else "")
        for part in parts:
            print(f"{part['seconds']:7.1f} s  {part['part'][:110]}")
        print(f"{total:7.1f} s  in all, from a fresh clone of {head}")
        split = profile_training(parts[-1]["part"], clone, env) if args.profile else None
        if split:
            print("the training under cProfile:")
            for phase, value in split.items():
                print(f"{value:7.1f} s  {phase}")
    write_json(
        RESULTS,
        {
            "date": date.today().isoformat(),
            "commit": head,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "threads": args.threads,
            "command": command,
            "printed": [line for line in output.splitlines() if "mIoU" in line or "trained" in line],
            "parts": parts,
            "total_seconds": total,
            "profiled_training_seconds": split,
        },
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
