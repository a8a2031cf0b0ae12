"""Trackers: a tiny run with `--report_to tensorboard,trackio`, read back from trackio's local store and TensorBoard's
event files. Every logged value reaches both, the per-class series under grouped names
(duda_hf/training/trackers.py), and the run makes no network attempt."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import tiny_argv

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("road", "sidewalk", "traffic_light", "bicycle")  # a few of the 19, spaces as underscores

# Runs a program with every IPv4/IPv6 connection, name look-up and listening socket refused and written down.
NO_NETWORK = """
import os, runpy, socket, sys
log = os.environ["NETWORK_ATTEMPTS"]
def refuse(what, where):
    with open(log, "a") as f:
        f.write(f"{what} {where!r}\\n")
    raise OSError(f"no network in this test: {what} {where!r}")
connect, bind = socket.socket.connect, socket.socket.bind
def guarded_connect(self, address):
    return refuse("connect", address) if self.family in (socket.AF_INET, socket.AF_INET6) else connect(self, address)
def guarded_bind(self, address):
    return refuse("bind", address) if self.family in (socket.AF_INET, socket.AF_INET6) else bind(self, address)
socket.socket.connect, socket.socket.bind = guarded_connect, guarded_bind
socket.getaddrinfo = lambda host, *args, **kwargs: refuse("getaddrinfo", host)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# trackio's own reader of its local store: every run of a project with its logged rows
READ_TRACKIO = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
project = sys.argv[1]
print(json.dumps({run: SQLiteStorage.get_logs(project, run) for run in SQLiteStorage.get_runs(project)}))
"""


def run_training(tiny_benchmark, tmp_path, *flags) -> tuple[Path, dict[str, list[dict]], subprocess.CompletedProcess]:
    """`scripts/train_duda.py` on the tiny benchmark into tmp_path/run, offline and without network, trackio's store in
    tmp_path/trackio. Returns the output folder, trackio's runs of the project `duda-hf` (name: rows) and the process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TRACKIO_", "TENSORBOARD_"))}
    env.update(HF_HUB_OFFLINE="1", TRACKIO_DIR=str(tmp_path / "trackio"), NETWORK_ATTEMPTS=str(tmp_path / "network.log"))
    output_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", NO_NETWORK, "scripts/train_duda.py", *tiny_argv(tiny_benchmark, output_dir, *flags)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    attempts = tmp_path / "network.log"
    assert not attempts.exists(), f"network attempts of an offline run:\n{attempts.read_text()}"
    read = subprocess.run(
        [sys.executable, "-c", READ_TRACKIO, "duda-hf"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert read.returncode == 0, read.stderr[-3000:]
    return output_dir, json.loads(read.stdout), done


def tracker_name(key: str) -> str:
    """Where a key of the log history is in the trackers: `rewrite_logs`' prefix, the class weights grouped."""
    grouped = re.fullmatch(r"class_weight_(\w+)", key)
    if grouped:
        key = f"class_weight/{grouped[1]}"
    return f"eval/{key[len('eval_') :]}" if key.startswith("eval_") else f"train/{key}"


def series(rows: list[dict], name: str) -> list[tuple[int, float]]:
    """A trackio metric as (global step, value) pairs, in logging order."""
    return [(row["train/global_step"], row[name]) for row in rows if name in row]


def tensorboard_scalars(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events in sorted(output_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((event.step, event.value) for event in accumulator.Scalars(tag))
    return scalars


@pytest.mark.slow
def test_trackio_and_tensorboard_get_every_value_with_the_per_class_series_grouped(tiny_benchmark, tmp_path):
    pytest.importorskip("trackio", reason="pip install -e '.[trackio]'")
    pytest.importorskip("tensorboard", reason="pip install -e '.[tensorboard]'")
    output_dir, runs, done = run_training(
        tiny_benchmark, tmp_path, "--report_to", "tensorboard,trackio", "--eval_strategy", "steps", "--eval_steps", "3"
    )
    # one trackio run in the project, named after the output folder and the time it started
    (name,) = runs
    assert re.fullmatch(r"run-\d{8}-\d{6}", name), name
    rows = runs[name]
    results = json.loads((output_dir / "eval_results.json").read_text())
    train_history, eval_history = results["train_history"], results["history"]
    assert [entry["step"] for entry in train_history] == [1, 2, 3, 4] and [entry["step"] for entry in eval_history] == [3, 4]

    # the loss: one point per logging step, the log history's values
    assert series(rows, "train/loss") == [(entry["step"], entry["loss"]) for entry in train_history]
    # the class weights, grouped: every step's 19 values exactly, and no flat name left
    for class_key in CLASSES:
        assert series(rows, f"train/class_weight/{class_key}") == [(e["step"], e[f"class_weight_{class_key}"]) for e in train_history]
    assert len({name for row in rows for name in row if name.startswith("train/class_weight/")}) == 19
    assert not [name for row in rows for name in row if "class_weight_" in name]
    # the evaluations: the networks' mIoU and agreement, then each network's per-class IoU in percent
    for key in ("eval_student_mIoU", "eval_auxiliary_mIoU", "eval_teacher_mIoU", "eval_student_teacher_agreement"):
        assert series(rows, tracker_name(key)) == [(entry["step"], entry[key]) for entry in eval_history], key
    per_class = results["per_class_history"]
    assert [record["step"] for record in per_class] == [3, 4]
    for network in ("student", "auxiliary", "teacher", "student_vs_teacher"):
        for class_name, iou in per_class[-1][network].items():
            found = series(rows, f"eval/{network}_iou/{class_name.replace(' ', '_')}")
            if iou is None or not math.isfinite(iou):  # no IoU (neither labelled nor predicted): no point
                assert all(step != 4 for step, _ in found)
            else:
                assert found[-1] == (4, round(100 * iou, 2)), (network, class_name)
    assert len(series(rows, "eval/student_iou/road")) == 2

    # TensorBoard: every value of the log history under the same names (float32), the per-class IoU beside them
    scalars = tensorboard_scalars(output_dir)
    assert scalars, f"no TensorBoard events under {output_dir}"
    for entry in train_history + eval_history:
        for key, value in entry.items():
            if key == "step":
                continue
            assert any(step == entry["step"] and value == pytest.approx(logged, rel=1e-6) for step, logged in scalars[tracker_name(key)]), (
                key,
                entry["step"],
            )
    assert not [tag for tag in scalars if "class_weight_" in tag]
    assert [step for step, _ in scalars["eval/student_iou/road"]] == [3, 4]
    assert scalars["eval/teacher_iou/road"][-1][1] == pytest.approx(round(100 * per_class[-1]["teacher"]["road"], 2), rel=1e-6)
    # the console stays short: no per-class series there
    assert "class_weight" not in done.stdout and "_iou/" not in done.stdout


@pytest.mark.slow
def test_an_evaluation_after_training_goes_to_the_same_trackio_run(tiny_benchmark, tmp_path):
    """Without evaluations during training the program evaluates once at the end, after Trainer has finished the
    trackio run: the result continues that run, not a new one."""
    pytest.importorskip("trackio", reason="pip install -e '.[trackio]'")
    output_dir, runs, _ = run_training(tiny_benchmark, tmp_path, "--report_to", "trackio", "--eval_strategy", "no")
    (name,) = runs
    rows = runs[name]
    assert [step for step, _ in series(rows, "train/loss")] == [1, 2, 3, 4]
    student = json.loads((output_dir / "eval_results.json").read_text())["metrics"]["student"]
    assert series(rows, "eval/student_mIoU") == [(4, round(100 * student["mIoU"], 2))]
    assert series(rows, "eval/student_iou/road") == [(4, round(100 * student["per_class_iou"]["road"], 2))]


def test_per_class_names_for_the_trackers():
    from duda_hf.training.step_log import CLASS_KEYS
    from duda_hf.training.trackers import per_class_logs, tracker_names

    weights = {f"class_weight_{name}": float(i) for i, name in enumerate(CLASS_KEYS)}
    logs = tracker_names({"loss": 1.0, "loss_student_train": 2.0, **weights})
    # the 19 class weights grouped, in place; a name that merely ends like a class is left alone
    assert logs["class_weight/traffic_light"] == 6.0 and logs["loss_student_train"] == 2.0 and "class_weight_road" not in logs
    assert len([key for key in logs if key.startswith("class_weight/")]) == 19
    record = {"step": 5, "student": {"road": 0.123456, "traffic light": float("nan")}, "student_vs_teacher": {"road": 1.0}}
    assert per_class_logs(record) == {"eval_student_iou/road": 12.35, "eval_student_vs_teacher_iou/road": 100.0}


def test_report_to_takes_a_comma_separated_list_and_names_the_run(tmp_path):
    from duda_hf.cli.arguments import parse_args
    from duda_hf.training.trackers import name_the_run

    _, _, config = parse_args(["--output_dir", str(tmp_path / "gta2cs_b5_b0"), "--report_to", "tensorboard,trackio"])
    assert config.report_to == ["tensorboard", "trackio"]
    assert (config.project, config.run_name) == ("duda-hf", None)
    name_the_run(config, None)  # a new run: the folder and the time, so a rerun or a same-named folder is another run
    assert re.fullmatch(r"gta2cs_b5_b0-\d{8}-\d{6}", config.run_name), config.run_name
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "training_args.json").write_text(json.dumps({"run_name": "gta2cs_b5_b0-20261206-101500"}))
    _, _, resumed = parse_args(["--output_dir", str(tmp_path / "gta2cs_b5_b0"), "--report_to", "trackio"])
    name_the_run(resumed, str(checkpoint))  # a resume continues its own tracker run
    assert resumed.run_name == "gta2cs_b5_b0-20261206-101500"
    _, _, config = parse_args(["--output_dir", str(tmp_path), "--report_to", "trackio", "--run_name", "mine", "--project", "p"])
    name_the_run(config, str(checkpoint))
    assert (config.report_to, config.project, config.run_name) == (["trackio"], "p", "mine")
    _, _, quiet = parse_args(["--output_dir", str(tmp_path)])
    name_the_run(quiet, None)  # no tracker: Trainer's default, untouched
    assert quiet.report_to == [] and quiet.run_name is None


def test_an_offline_run_refuses_a_trackio_space(tmp_path, monkeypatch):
    """Logging to a Space needs the Hub: offline, the run stops before it starts instead of trying the network."""
    pytest.importorskip("trackio", reason="pip install -e '.[trackio]'")
    from duda_hf.method.config import DudaConfig
    from duda_hf.training.trackers import check_trackers

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read once, when huggingface_hub is imported
    monkeypatch.delenv("TRACKIO_SPACE_ID", raising=False)
    check_trackers(DudaConfig(output_dir=str(tmp_path), report_to="trackio"))  # local: fine
    with pytest.raises(ValueError, match="offline"):
        check_trackers(DudaConfig(output_dir=str(tmp_path), report_to="trackio", trackio_space_id="me/runs"))
