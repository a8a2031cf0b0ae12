"""What a run records is what it ran: the saved arguments keep `--torch_compile`, and `eval_results.json` keeps the
run's settings apart from its metrics in one schema that every reader reads, from old files too (issue 31, item 4)."""

import json
import shutil
from pathlib import Path

import pytest

from .conftest import load_strict_json, tiny_argv

ROOT = Path(__file__).resolve().parents[1]
TWO_STEPS = ("--max_steps", "2", "--preadapt_steps", "0", "--distill_ramp_steps", "1", "--report_to", "none")


@pytest.fixture(scope="module")
def tiny_run(tiny_benchmark, tmp_path_factory):
    """A 2-step `duda` run of the tiny networks, evaluated at its end: its output folder."""
    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.training_run import run_training

    output = tmp_path_factory.mktemp("records") / "run"
    run_training(*parse_args(tiny_argv(tiny_benchmark, output, *TWO_STEPS)))
    return output


def old_shape(new: dict) -> dict:
    """A run's eval_results.json as duda-hf wrote it before schema 2, made by hand from a new one: the settings and
    the networks' metrics side by side at the top (`student` the metrics, which overwrote the preset name), the raw
    `--target_eval_dataset`, and the settings again under `recipe`."""
    settings = new["settings"]
    return {
        "method": settings["method"],
        "student": settings["student"],
        "aux_student": settings.get("aux_student"),
        "max_steps": settings["max_steps"],
        "seed": settings["seed"],
        "target_eval_dataset": "/data/some/where/target_val",
        **new["metrics"],  # `student` (the name above) becomes the student's metrics, as it did
        "history": new["history"],
        "per_class_history": new["per_class_history"],
        "train_history": new["train_history"],
        "bad_samples": new["bad_samples"],
        "seconds": new["seconds"],
        "recipe": settings,
    }


# ---- 1. the saved arguments say what was compiled ----


@pytest.mark.parametrize(
    ("flags", "backend", "mode"),
    [
        (("--torch_compile",), "inductor", None),
        (("--torch_compile", "--torch_compile_backend", "eager", "--torch_compile_mode", "reduce-overhead"), "eager", "reduce-overhead"),
    ],
)
def test_the_saved_arguments_say_that_the_networks_were_compiled(tmp_path, flags, backend, mode):
    from duda_hf.cli.arguments import parse_args
    from duda_hf.method.config import DudaConfig

    benchmark = dict.fromkeys(("source", "target", "target_val"), str(tmp_path))
    _, _, config = parse_args(tiny_argv(benchmark, tmp_path / "run", *flags))
    # Trainer and accelerate read these attributes: they stay off, the networks are compiled instead
    assert (config.torch_compile, config.torch_compile_backend, config.torch_compile_mode) == (False, None, None)
    assert config.compile_networks == {"backend": backend, "mode": mode}
    saved = json.loads(config.to_json_string())  # training_args.json
    assert (saved["torch_compile"], saved["torch_compile_backend"], saved["torch_compile_mode"]) == (True, backend, mode)
    assert config.to_sanitized_dict()["torch_compile"] is True  # the trackers' config
    # read back, the record compiles the networks the same way and still leaves the wrapper alone
    again = DudaConfig(**saved)
    assert again.compile_networks == config.compile_networks and again.torch_compile is False
    plain = json.loads(parse_args(tiny_argv(benchmark, tmp_path / "plain"))[2].to_json_string())
    assert (plain["torch_compile"], plain["torch_compile_backend"], plain["torch_compile_mode"]) == (False, None, None)


@pytest.mark.slow
def test_a_compiled_runs_checkpoint_records_the_compilation(tiny_benchmark, tmp_path):
    """A real run with each network compiled (the eager backend: the compilation without code generation)."""
    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.training_run import run_training
    from duda_hf.method.config import DudaConfig

    flags = ("--torch_compile", "--torch_compile_backend", "eager", "--save_strategy", "steps", "--save_steps", "2")
    run_training(*parse_args(tiny_argv(tiny_benchmark, tmp_path / "run", *TWO_STEPS, *flags)))
    saved = load_strict_json(tmp_path / "run" / "checkpoint-2" / "training_args.json")
    assert (saved["torch_compile"], saved["torch_compile_backend"], saved["torch_compile_mode"]) == (True, "eager", None)
    assert DudaConfig(**saved).compile_networks == {"backend": "eager", "mode": None}


# ---- 2. eval_results.json: one schema, one reader ----


def test_a_runs_eval_results_keep_the_settings_apart_from_the_metrics(tiny_run):
    from duda_hf.evaluation.results_file import read_results

    results = load_strict_json(tiny_run / "eval_results.json")
    assert list(results) == [
        "schema_version",
        "kind",
        "settings",
        "metrics",
        "history",
        "per_class_history",
        "train_history",
        "bad_samples",
        "seconds",
    ]
    assert (results["schema_version"], results["kind"]) == (3, "training_run")
    settings, metrics = results["settings"], results["metrics"]
    assert (settings["method"], settings["student"], settings["aux_student"]) == ("duda", "tiny", "tiny-wide")
    assert (settings["max_steps"], settings["seed"], settings["target_eval_dataset"]) == (2, 3, "target_val")
    assert settings["origins"]["target_eval"]["name"] == "target_val" and settings["preadapt_steps"] == 0
    assert list(metrics) == ["student", "auxiliary", "teacher", "student_vs_teacher"]
    assert metrics["student"]["num_images"] == 6 and len(metrics["student"]["per_class_iou"]) == 19
    assert results["history"][-1]["eval_student_mIoU"] == round(100 * metrics["student"]["mIoU"], 2)
    assert [entry["step"] for entry in results["train_history"]] == [1, 2] and results["bad_samples"]["count"] == 0
    assert read_results(tiny_run / "eval_results.json") == results


def test_an_old_eval_results_file_reads_as_the_new_one(tiny_run, tmp_path):
    from duda_hf.evaluation.report import teacher_premise
    from duda_hf.evaluation.results_file import read_results

    new = load_strict_json(tiny_run / "eval_results.json")
    (tmp_path / "eval_results.json").write_text(json.dumps(old_shape(new)))
    assert read_results(tmp_path / "eval_results.json") == new
    # older still: no recipe. Its top-level settings are what is left, the raw dataset path included
    oldest = {key: value for key, value in old_shape(new).items() if key != "recipe"}
    settings = read_results(oldest)["settings"]
    assert settings == {
        "method": "duda",
        "aux_student": "tiny-wide",
        "max_steps": 2,
        "seed": 3,
        "target_eval_dataset": "/data/some/where/target_val",
    }
    assert read_results(oldest)["metrics"] == new["metrics"]
    # what is read from either shape is the same: the teacher premise of a 2-step run from scratch
    assert teacher_premise(new) == teacher_premise(old_shape(new)) and teacher_premise(new) is not None


def test_the_model_card_and_duda_push_read_old_and_new_files_to_the_same_card(tiny_run, tmp_path, monkeypatch):
    from duda_hf.cli import push_to_hub
    from duda_hf.export.model_card import build_model_card, card_files

    new = load_strict_json(tiny_run / "eval_results.json")
    student = tiny_run / "student"
    texts = {
        shape: build_model_card(content, "me/records", eval_size_hw=(64, 128), **card_files(student)).text
        for shape, content in (("new", new), ("old", old_shape(new)))
    }
    assert texts["old"] == texts["new"]
    # the settings and the metrics each where the card shows them
    assert "| student | tiny |" in texts["new"] and "| aux_student | tiny-wide |" in texts["new"]
    assert f"| student (this model) | **{100 * new['metrics']['student']['mIoU']:.2f}** |" in texts["new"]

    pushed = []
    monkeypatch.setattr(push_to_hub, "push_folder", lambda model_dir, repo_id, **kwargs: pushed.append(repo_id) or "url")
    cards = {}
    for shape, content in (("new", new), ("old", old_shape(new))):
        run = tmp_path / shape
        shutil.copytree(student, run / "student")
        (run / "eval_results.json").write_text(json.dumps(content))
        assert push_to_hub.main(["--model_dir", str(run / "student"), "--repo_id", "me/records"]) == 0
        cards[shape] = (run / "student" / "README.md").read_text()
    assert pushed == ["me/records", "me/records"] and cards["old"] == cards["new"]
    assert "| student | tiny |" in cards["new"]


def test_duda_push_refuses_an_evaluation_report_in_one_line(tiny_run, tmp_path, capfd):
    """duda-evaluate writes a file of the same name (before schema 2: its settings at the top, the metrics under
    `models`); a card written from it would describe nothing the run did."""
    from duda_hf.cli import push_to_hub

    shutil.copytree(tiny_run / "student", tmp_path / "student")
    (tmp_path / "student" / "README.md").unlink()
    student = load_strict_json(tiny_run / "eval_results.json")["metrics"]["student"]
    settings = {"dataset": "data/target_val", "format": None, "split": "validation", "mode": "whole", "eval_size": None, "num_images": 6}
    reports = {
        "old": {**settings, "seconds": 1.0, "models": {"student": {**student, "model": "run/student"}}},
        "new": {"schema_version": 2, "kind": "evaluation", "settings": settings, "metrics": {"student": student}, "seconds": 1.0},
    }
    for shape, report in reports.items():
        path = tmp_path / shape / "eval_results.json"
        path.parent.mkdir()
        path.write_text(json.dumps(report))
        argv = ["--model_dir", str(tmp_path / "student"), "--repo_id", "me/records", "--eval_results", str(path)]
        assert push_to_hub.main(argv) == 2
        assert capfd.readouterr().err == (
            f"error: '{path}' is an evaluation report (duda-evaluate), not a training run's results (duda-train); "
            "pass the eval_results.json in a duda-train run's output folder\n"
        )
        assert not (tmp_path / "student" / "README.md").exists()  # the folder is left as it was
    (tmp_path / "newer.json").write_text(json.dumps({"schema_version": 4, "kind": "training_run"}))
    assert push_to_hub.main([*argv[:-1], str(tmp_path / "newer.json")]) == 2
    assert "has schema_version 4, newer than this duda-hf reads (3); upgrade duda-hf to read it" in capfd.readouterr().err


def test_the_benchmarks_read_old_and_new_files_alike(tiny_run, tmp_path, monkeypatch):
    """quality_synthetic.py and distillation_gap.py take a kept run's eval_results.json as they find it."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import distillation_gap
    import quality_synthetic

    from duda_hf.evaluation.results_file import read_results

    new = load_strict_json(tiny_run / "eval_results.json")
    records = {}
    for shape, content in (("new", new), ("old", old_shape(new))):
        folder = tmp_path / shape / "random_duda_paper_seed0"
        folder.mkdir(parents=True)
        (folder / "eval_results.json").write_text(json.dumps(content))
        records[shape] = quality_synthetic.run("random_duda_paper", 0, tmp_path / shape, [], collect_only=True)
        records[shape]["analysis"] = distillation_gap.analyse(read_results(folder / "eval_results.json"))
    assert records["old"] == records["new"]
    assert records["new"]["student_mIoU"] == round(100 * new["metrics"]["student"]["mIoU"], 2)
    assert records["new"]["analysis"]["trajectory"][0]["step"] == 2


def test_an_evaluation_written_before_schema_3_is_read_with_its_eval_size_height_first(tmp_path):
    """duda-evaluate wrote `settings.eval_size` width first before schema 3 (as --eval_size then took it); every file
    read_results gives holds it height first, as --eval_size, --window and --stride now take them."""
    from duda_hf.evaluation.results_file import EVALUATION, read_results

    settings = {"models": {"student": "run/student"}, "dataset": "data/cs", "mode": "slide", "window": [512, 512], "stride": [341, 341]}
    metrics = {"student": {"mIoU": 0.5}}
    files = {
        "schema 1": {
            **{k: v for k, v in settings.items() if k != "models"},
            "eval_size": [1024, 512],
            "models": {"student": {**metrics["student"], "model": "run/student"}},
        },
        "schema 2": {"schema_version": 2, "kind": EVALUATION, "settings": {**settings, "eval_size": [1024, 512]}, "metrics": metrics},
        "schema 3": {"schema_version": 3, "kind": EVALUATION, "settings": {**settings, "eval_size": [512, 1024]}, "metrics": metrics},
    }
    for name, content in files.items():
        (tmp_path / "eval_results.json").write_text(json.dumps(content))
        read = read_results(tmp_path / "eval_results.json", EVALUATION)["settings"]
        assert read["eval_size"] == [512, 1024], name
        assert (read.get("window"), read.get("stride")) == (([512, 512], [341, 341]) if "models" not in content else (None, None)), name
    assert read_results(files["schema 2"], EVALUATION)["settings"]["eval_size"] == [512, 1024]
    assert files["schema 2"]["settings"]["eval_size"] == [1024, 512]  # a dict is read, not changed
    once = read_results(files["schema 2"], EVALUATION)
    assert once["schema_version"] == 3 and read_results(once, EVALUATION) == once  # read again: nothing turns back
    unsized = read_results({"schema_version": 2, "kind": EVALUATION, "settings": {"eval_size": None}, "metrics": {}}, EVALUATION)
    assert unsized["settings"]["eval_size"] is None  # the native size
