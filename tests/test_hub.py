"""Export, model card and push (HfApi patched, no network) for a model trained by a tiny run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from huggingface_hub import ModelCard

from .conftest import load_strict_json, tiny_argv

ROOT = Path(__file__).resolve().parents[1]
# an exported student: the model, its processor, its card and the pictures the card shows
STUDENT_FILES = [
    "README.md",
    "config.json",
    "model.safetensors",
    "plots/miou_over_training.png",
    "plots/per_class_iou.png",
    "preprocessor_config.json",
]


@pytest.fixture(scope="module")
def trained_run(tiny_benchmark, tmp_path_factory):
    output = tmp_path_factory.mktemp("hub") / "run"
    done = subprocess.run(
        [sys.executable, "scripts/train_duda.py", *tiny_argv(tiny_benchmark, output, "--hub_model_id", "org/duda-tiny-synthetic")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return output


@pytest.mark.slow
def test_export_has_no_pickles_and_card_validates_with_the_numbers(trained_run):
    results = load_strict_json(trained_run / "eval_results.json")
    # a class absent from the 6 validation labels has no accuracy: null in the file, "—" in the card
    absent = [name for name, value in results["metrics"]["student"]["per_class_accuracy"].items() if value is None]
    assert absent, "the tiny validation set lacks some classes, so the file must hold nulls"
    for folder in ("student", "teacher"):
        names = sorted(p.name for p in (trained_run / folder).iterdir())
        assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
        assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(names)
    card = ModelCard.load(trained_run / "student" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "image-segmentation"
    # the data came from save_to_disk folders: no Hub dataset to name (their model-index and `datasets` are tested below)
    assert "datasets" not in data and "model-index" not in data
    text = card.text
    assert 'pipeline("image-segmentation", model="org/duda-tiny-synthetic")' in text
    road = results["metrics"]["student"]["per_class_iou"]["road"]
    assert f"| road | {100 * road:.2f} | " in text  # student, then teacher
    assert "| max_steps | 4 |" in text and "| method | duda |" in text and "arXiv 2504.09814" in text
    # the run's pictures, beside the weights, embedded by relative path (so they show on the Hub once pushed)
    for picture in ("miou_over_training.png", "per_class_iou.png"):
        assert (trained_run / "student" / "plots" / picture).read_bytes() == (trained_run / "plots" / picture).read_bytes()
    assert "![Target mIoU of the networks over training](plots/miou_over_training.png)" in text
    assert "![Per-class IoU at the end of training](plots/per_class_iou.png)" in text


NATIVE_FLAGS = ("--source_format", "gta5", "--target_format", "cityscapes", "--target_eval_format", "cityscapes")


@pytest.mark.parametrize("origin", ["save_to_disk", "hub", "native"])
def test_the_cards_metadata_names_hub_datasets_only_and_its_text_the_runs_data(trained_run, tiny_benchmark, tmp_path, origin):
    """What the Hub shows for a card: `datasets` and the model-index name Hub datasets only (a link to a dataset repo
    must exist), a native folder by its official name in the model-index, a local folder nowhere; the text names the
    data the run read and links only to what exists."""
    from duda_hf.cli.arguments import parse_args
    from duda_hf.export.model_card import build_model_card, card_plots, recipe_summary

    argv = tiny_argv(tiny_benchmark, tmp_path / "run")
    if origin == "hub":
        for flag, repo in (
            ("--source_dataset", "me/gta5-stored"),
            ("--target_dataset", "me/cs-train"),
            ("--target_eval_dataset", "me/cs-val"),
        ):
            argv[argv.index(flag) + 1] = repo
    elif origin == "native":
        for flag, folder in (("--source_dataset", "GTA5"), ("--target_dataset", "cityscapes"), ("--target_eval_dataset", "cityscapes")):
            argv[argv.index(flag) + 1] = str(tmp_path / folder)
            (tmp_path / folder).mkdir(exist_ok=True)
        argv += NATIVE_FLAGS
    results = {**load_strict_json(trained_run / "eval_results.json"), "settings": recipe_summary(*parse_args(argv))}
    card = build_model_card(results, "me/duda-card", plots=card_plots(trained_run / "student"))
    card.save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")
    data, text = card.data.to_dict(), card.text
    expected = {
        "save_to_disk": (None, None, "source", "target"),
        "hub": (
            ["me/gta5-stored", "me/cs-train"],
            {"type": "me/cs-val", "name": "me/cs-val", "split": "validation"},
            "me/gta5-stored",
            "me/cs-train",
        ),
        "native": (None, {"type": "cityscapes", "name": "Cityscapes", "split": "validation"}, "GTA5", "Cityscapes"),
    }[origin]
    datasets, index_dataset, source, target = expected
    assert data.get("datasets") == datasets
    if index_dataset is None:
        assert "model-index" not in data
    else:
        (result,) = data["model-index"][0]["results"]
        assert result["dataset"] == index_dataset
        assert result["metrics"] == [{"type": "mean_iou", "value": round(100 * results["metrics"]["student"]["mIoU"], 2), "name": "mIoU"}]
    assert f"on\n**{target}**, adapted without target labels from **{source}** with DUDA" in text
    from importlib.metadata import version

    assert "github.com" not in text and f"distillation. Trained with duda-hf {version('duda-hf')}.\n" in text
    # the version that trained, from the run's recipe, not the one installed when the card is written again
    older = build_model_card({**results, "settings": {**results["settings"], "duda_hf_version": "0.0.9"}}, "me/duda-card").text
    assert "Trained with duda-hf 0.0.9." in older
    unknown = build_model_card({**results, "settings": {k: v for k, v in results["settings"].items() if k != "duda_hf_version"}}, "me/x")
    assert "Trained with duda-hf" not in unknown.text
    licences = {
        "save_to_disk": "- Check the terms of its data (source, target, target_val) before any other use.",
        "hub": "- Check the terms of its data (me/cs-train, me/cs-val, me/gta5-stored) before any other use.",
        "native": "- Its data (GTA5, Cityscapes) have their own licences, for research or non-commercial\n  use; check them",
    }[origin]
    assert licences in text
    assert ("Its data (" in text) == (origin == "native")
    if origin == "native":  # conditions read and the split evaluated are part of what the model-index claims
        from duda_hf.export.model_card import dataset_origin

        night = dataset_origin(str(tmp_path / "cityscapes"), "acdc", "val", ("night",))
        assert night == {"name": "ACDC (night)", "hub_id": None, "native": "acdc", "split": "val"}
        recipe = {**results["settings"], "origins": {**results["settings"]["origins"], "target_eval": night}}
        data = build_model_card({**results, "settings": recipe}, "me/duda-card").data.to_dict()
        assert data["model-index"][0]["results"][0]["dataset"] == {"type": "acdc", "name": "ACDC (night)", "split": "val"}


@pytest.mark.parametrize("method", ["self_training", "source_only"])
def test_a_baselines_card_says_what_the_baseline_did(trained_run, tiny_benchmark, tmp_path, method):
    """A baseline's card does not describe DUDA's large pair: its teacher is the student's own EMA (self-training) or
    there is none, and a source-only model is not called adapted."""
    from duda_hf.cli.arguments import parse_args
    from duda_hf.export.model_card import build_model_card, recipe_summary

    run = load_strict_json(trained_run / "eval_results.json")
    recipe = recipe_summary(*parse_args(tiny_argv(tiny_benchmark, tmp_path, "--method", method)))
    results = {"method": method, "student": run["metrics"]["student"], "recipe": recipe}  # as files before schema 2 had it
    if method == "self_training":
        results["teacher"] = run["metrics"]["teacher"]
    text = build_model_card(results, "me/baseline").text
    # an eval_results.json from before the recipe left the large pair out still gets a card without it
    older = build_model_card({**results, "recipe": {**recipe, "aux_student": "tiny-wide", "kd_temperature": 0.5}}, "me/baseline").text
    assert older == text
    table = text[text.index("## Training recipe") :]
    assert ("| ema_alpha |" in table) == ("| pseudo_label_threshold |" in table) == (method == "self_training")
    assert "| preadapt_steps |" not in table and "| kd_temperature |" not in table and "| inconsistency_beta |" not in table
    assert "aux_student" not in recipe and "tiny-wide" not in text and "auxiliary" not in text and "gradual distillation" not in text
    if method == "self_training":
        assert "adapted without target labels from **source** by self-training: its own EMA teacher makes" in text
        assert "| class | student (this model) | teacher (EMA of the student) |" in text
    else:
        assert "trained on labelled **source** only and evaluated on **target**: not adapted to the target" in text
        assert "| class | student (this model) |\n" in text and "adapted without target labels" not in text
        assert "It was trained without any target data" in text


@pytest.mark.slow
def test_pipeline_returns_cityscapes_named_masks(trained_run):
    code = (
        "import sys, numpy as np\n"
        "from PIL import Image\n"
        "from transformers import pipeline\n"
        "segmenter = pipeline('image-segmentation', model=sys.argv[1])\n"
        "out = segmenter(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)))\n"
        "assert 'duda_hf' not in sys.modules\n"
        "print(sorted({o['label'] for o in out}), out[0]['mask'].size)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(trained_run / "student")], capture_output=True, text=True, cwd="/", check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    from duda_hf.data.labels import CITYSCAPES_CLASSES

    labels = eval(done.stdout.splitlines()[-1].rsplit("]", 1)[0] + "]")
    assert labels and set(labels) <= set(CITYSCAPES_CLASSES)
    assert done.stdout.strip().endswith("(70, 40)")


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and the files of each upload."""

    calls: ClassVar[list] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        self.calls.append(("upload_folder", repo_id, {**kwargs, "files": files}))

        class Info:
            commit_url = f"https://hub.example/{repo_id}/commit/abc"

        return Info()


def test_push_sends_exactly_the_export_with_the_commit(trained_run, monkeypatch):
    from duda_hf.export import hub

    RecordingApi.calls = []
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    sys.path.insert(0, str(ROOT / "scripts"))
    import push_to_hub

    code = push_to_hub.main(
        [
            "--model_dir",
            str(trained_run / "student"),
            "--repo_id",
            "me/duda-b0",
            "--private",
            "--revision",
            "v1",
            "--commit_message",
            "first student",
        ]
    )
    assert code == 0
    kinds = [c[0] for c in RecordingApi.calls]
    assert kinds == ["create_repo", "create_branch", "upload_folder"]
    assert RecordingApi.calls[0][2]["private"] is True
    upload = RecordingApi.calls[2][2]
    assert upload["files"] == STUDENT_FILES
    assert upload["commit_message"] == "first student" and upload["revision"] == "v1"
    assert 'model="me/duda-b0"' in (trained_run / "student" / "README.md").read_text()


def test_push_offline_fails_clearly_and_leaves_files(trained_run, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import importlib

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    sys.path.insert(0, str(ROOT / "scripts"))
    import push_to_hub

    importlib.reload(push_to_hub)

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(trained_run)): p.read_bytes() for p in (trained_run / "student").rglob("*") if p.is_file()}

    before = files()
    assert push_to_hub.main(["--model_dir", str(trained_run / "student"), "--repo_id", "me/other-name"]) == 2
    message = capsys.readouterr().err
    assert "cannot push to 'me/other-name'" in message and "unchanged" in message
    assert files() == before
    assert push_to_hub.main(["--model_dir", str(trained_run), "--repo_id", "me/x"]) == 2
    assert "not an exported model" in capsys.readouterr().err


def test_a_teacher_is_not_pushed_under_the_students_card(trained_run, capsys):
    """The card written from eval_results.json describes the student; pushing teacher/ with it would misstate the
    model, so it is refused in one line (before any Hub call) unless the folder's own card is kept."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import push_to_hub

    assert push_to_hub.main(["--model_dir", str(trained_run / "teacher"), "--repo_id", "me/teacher"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors == [
        (
            f"error: '{trained_run / 'teacher'}' is a run's teacher, and the model card written from eval_results.json describes "
            "the run's student: push the student/ folder, or write teacher/README.md yourself and pass --keep_card"
        )
    ]
    assert not (trained_run / "teacher" / "README.md").exists()


@pytest.mark.parametrize("quantized", [True, False])
def test_the_cards_onnx_section_names_only_the_files_the_folder_holds(trained_run, quantized):
    from duda_hf.export.model_card import build_model_card

    text = build_model_card(load_strict_json(trained_run / "eval_results.json"), "me/onnx", onnx=True, onnx_quantized=quantized).text
    assert ("model_quantized.onnx" in text) == quantized and ('dtype: "q8"' in text) == quantized
    assert 'hf_hub_download("me/onnx", "onnx/model.onnx")' in text
    if not quantized:
        assert "`onnx/model.onnx` (fp32) holds the network: input" in text and 'dtype: "fp32" });' in text


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _olah_cli() -> str | None:
    candidate = Path(os.environ.get("OLAH_CLI", ROOT / ".venv-olah" / "bin" / "olah-cli"))
    return str(candidate) if candidate.is_file() else None


def _serve_olah(tmp_path: Path, repos: dict[str, Path]):
    """olah (a Hub mirror, its own venv, installed by .ci/run) serving each folder as the git repo of a model id;
    yields its URL (HF_ENDPOINT)."""
    cli = _olah_cli()
    if cli is None:
        if os.environ.get("DUDA_REQUIRE_SYSTEM_TESTS") == "1":
            pytest.fail("olah is not installed in .venv-olah (or OLAH_CLI); .ci/run installs it")
        pytest.skip("olah not installed: python3 -m venv .venv-olah && .venv-olah/bin/pip install olah")
    for repo_id, folder in repos.items():
        repo = tmp_path / "mirrors" / "models" / repo_id
        shutil.copytree(folder, repo)
        git = ["git", "-c", "user.email=ci@duda-hf", "-c", "user.name=ci"]
        for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "DUDA"]):
            subprocess.run([*git, *command], cwd=repo, check=True)
    port = _free_port()
    config = tmp_path / "olah.toml"
    config.write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{tmp_path / "cache"}"\nmirrors-path = ["{tmp_path / "mirrors"}"]\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\nlog-path = "{tmp_path / "logs"}"\n\n'
        "[accessibility]\noffline = true\n"
    )
    server = subprocess.Popen([cli, "-c", str(config)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            break
        except urllib.error.HTTPError:  # any HTTP answer means the server is up
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("olah did not start within 60 s")
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def olah_mirror(trained_run, tmp_path):
    """The exported student as the Hub repo org/duda-mitb0-gta2cs, through a local mirror."""
    yield from _serve_olah(tmp_path, {"org/duda-mitb0-gta2cs": trained_run / "student"})


@pytest.mark.slow
def test_download_by_repo_id_through_a_local_mirror(trained_run, olah_mirror, tmp_path):
    code = (
        "import sys, torch\n"
        "from transformers import SegformerForSemanticSegmentation, pipeline\n"
        "from PIL import Image\n"
        "model = SegformerForSemanticSegmentation.from_pretrained('org/duda-mitb0-gta2cs')\n"
        "torch.manual_seed(0)\n"
        "torch.save(model.eval()(pixel_values=torch.randn(1, 3, 64, 128)).logits, sys.argv[1])\n"
        # olah answers 401 (not the Hub's 404) for files a repo lacks, which pipeline() probes by repo id
        # (processor_config.json); so the pipeline runs on the snapshot that came through the mirror.
        "from huggingface_hub import snapshot_download\n"
        "folder = snapshot_download('org/duda-mitb0-gta2cs')\n"
        "out = pipeline('image-segmentation', model=folder)(Image.new('RGB', (96, 48), (120, 90, 60)))\n"
        "print(sorted(o['label'] for o in out))\n"
        "assert 'duda_hf' not in sys.modules\n"
    )
    env = {**os.environ, "HF_ENDPOINT": olah_mirror, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home")}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "logits.pt")], env=env, cwd="/", capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "hf_home").rglob("model.safetensors")), "the weights came through the mirror into the cache"
    from transformers import SegformerForSemanticSegmentation

    local = SegformerForSemanticSegmentation.from_pretrained(trained_run / "student").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        expected = local(pixel_values=torch.randn(1, 3, 64, 128)).logits
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)
    from duda_hf.data.labels import CITYSCAPES_CLASSES

    labels = eval(done.stdout.strip().splitlines()[-1])
    assert labels and set(labels) <= set(CITYSCAPES_CLASSES)


def test_trainer_hub_options_push_checkpoints_to_subfolders_and_the_student_to_the_root(tiny_benchmark, tmp_path, monkeypatch):
    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.training_run import run_training
    from duda_hf.export import hub

    RecordingApi.calls = []
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    argv = tiny_argv(
        tiny_benchmark,
        tmp_path / "run",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "me/duda-live",
        "--hub_strategy",
        "checkpoint",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    )
    run_training(*parse_args(argv))
    uploads = [c[2] for c in RecordingApi.calls if c[0] == "upload_folder"]
    assert RecordingApi.calls[0][:2] == ("create_repo", "me/duda-live")
    assert [u["path_in_repo"] for u in uploads] == ["last-checkpoint", "last-checkpoint", None]
    # what is pushed is the complete, renamed checkpoint as saved (with networks.json), not a staging folder
    saved = sorted(
        str(p.relative_to(tmp_path / "run" / "checkpoint-2")) for p in (tmp_path / "run" / "checkpoint-2").rglob("*") if p.is_file()
    )
    assert uploads[0]["files"] == saved and "networks.json" in saved and "optimizer.safetensors" in saved
    assert uploads[0]["delete_patterns"] == "*"  # last-checkpoint/ keeps no file of an earlier push
    assert all(name.endswith((".safetensors", ".json")) for name in saved)
    assert uploads[-1]["files"] == STUDENT_FILES
    assert uploads[-1]["commit_message"] == "DUDA student after 4 steps"
    assert 'model="me/duda-live"' in (tmp_path / "run/student/README.md").read_text()


def test_trainer_push_offline_stops_before_training(tiny_benchmark, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.training_run import build_trainer
    from duda_hf.export.hub import HubError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="cannot push to 'me/duda-offline': offline mode is on"):
        build_trainer(
            *parse_args(tiny_argv(tiny_benchmark, tmp_path / "run", "--push_to_hub", "true", "--hub_model_id", "me/duda-offline"))
        )


def test_the_recipe_summary_names_the_duda_only_additions_only_for_duda(tiny_benchmark, tmp_path):
    """The card's recipe table: the stage and the clean-target terms for `duda`; the baselines, which ignore them, do
    not list them."""
    from duda_hf.cli.arguments import parse_args
    from duda_hf.export.model_card import recipe_summary

    flags = ("--max_steps", "8", "--distill_stage_steps", "0.25", "--kd_clean_target", "1", "--kd_temperature", "0.5")
    duda = recipe_summary(*parse_args(tiny_argv(tiny_benchmark, tmp_path, *flags)))
    assert (duda["distill_stage_steps"], duda["kd_clean_target"], duda["cwd_weight"], duda["kd_temperature"]) == (2, 1.0, 0.0, 0.5)
    baseline = recipe_summary(*parse_args(tiny_argv(tiny_benchmark, tmp_path, *flags, "--method", "self_training")))
    assert not {"distill_stage_steps", "kd_clean_target", "cwd_weight", "kd_confidence_weight"} & set(baseline)
    assert baseline["max_steps"] == 8


def _train(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_duda.py"), *argv], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.slow
def test_a_run_resumes_from_a_checkpoint_on_the_hub(tiny_benchmark, trained_run, tmp_path):
    """`--resume_from_checkpoint ORG/NAME` downloads the repo's last-checkpoint/ by repo id (over HTTP, from a local
    mirror) and continues bit for bit, on a machine with an empty output folder; a repo without a checkpoint is one
    error line."""
    from safetensors.torch import load_file

    reference = _train(tiny_argv(tiny_benchmark, tmp_path / "reference", "--save_strategy", "steps", "--save_steps", "2"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    pushed = tmp_path / "pushed"  # what --hub_strategy checkpoint pushes at step 2
    shutil.copytree(tmp_path / "reference" / "checkpoint-2", pushed / "last-checkpoint")
    mirror = _serve_olah(tmp_path / "olah", {"me/duda-run": pushed, "org/duda-mitb0-gta2cs": trained_run / "student"})
    env = {"HF_ENDPOINT": next(mirror), "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home")}
    try:
        resumed = _train(tiny_argv(tiny_benchmark, tmp_path / "elsewhere", "--resume_from_checkpoint", "me/duda-run"), **env)
        empty = _train(tiny_argv(tiny_benchmark, tmp_path / "none", "--resume_from_checkpoint", "org/duda-mitb0-gta2cs"), **env)
    finally:
        next(mirror, None)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "downloading me/duda-run/last-checkpoint from the Hub" in resumed.stderr
    assert "resuming from " in resumed.stderr and ": step 2 of 4" in resumed.stderr
    for network in ("student", "teacher"):
        expected = load_file(tmp_path / "reference" / network / "model.safetensors")
        got = load_file(tmp_path / "elsewhere" / network / "model.safetensors")
        assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)
    assert empty.returncode == 2
    errors = [line for line in empty.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        (
            "error: --resume_from_checkpoint org/duda-mitb0-gta2cs: the repo org/duda-mitb0-gta2cs has no last-checkpoint/ "
            "(checkpoints in it: none). A run pushes its checkpoints with --push_to_hub and --hub_strategy checkpoint "
            "(last-checkpoint/) or all_checkpoints (checkpoint-N/)."
        )
    ]


@pytest.mark.slow
def test_the_space_describes_a_hub_model_from_its_card_and_shows_its_pictures(trained_run, olah_mirror, tmp_path):
    """The Space (which has no duda_hf) given a repo id whose weights are already cached (as on a restarted Space): the
    card, its result and the pictures it embeds come through the Hub into the cache.

    (The weights are fetched first because olah answers 401, not the Hub's 404, for the processor file transformers
    probes by repo id; in the cache that probe is a plain miss.)"""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'spaces' / 'duda-demo')!r})\n"
        "from huggingface_hub import snapshot_download\n"
        "snapshot_download('org/duda-mitb0-gta2cs', allow_patterns=['*.json', '*.safetensors'])\n"
        "from huggingface_hub import constants\n"
        "import segmenter\n"
        "constants.HF_HUB_OFFLINE = True\n"  # first offline: the card is not in the cache, and the page says so
        "offline = segmenter.load_segmenter('org/duda-mitb0-gta2cs').info\n"
        "assert (offline.card, offline.summary, offline.plots) == ('unavailable', None, ()), offline\n"
        "constants.HF_HUB_OFFLINE = False\n"
        "info = segmenter.load_segmenter('org/duda-mitb0-gta2cs').info\n"
        "assert 'duda_hf' not in sys.modules\n"
        "import json\n"
        "print(json.dumps({'card': info.card, 'summary': info.summary, 'result': info.result, 'plots': info.plots}))\n"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": olah_mirror,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf_home"),
        "DUDA_RUNTIME": "pytorch",
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    info = json.loads(done.stdout.splitlines()[-1])
    assert info["card"] == "read"
    assert info["summary"].startswith("A **Segformer (tiny)** for semantic segmentation into the 19 Cityscapes classes on **target**")
    assert info["result"] is None  # a save_to_disk run's card names no Hub dataset, so it has no model-index
    assert [caption for _, caption in info["plots"]] == [
        "Target mIoU of the networks over training",
        "Per-class IoU at the end of training",
    ]
    for (path, _), picture in zip(info["plots"], ("miou_over_training.png", "per_class_iou.png")):
        assert str(tmp_path / "hf_home") in path  # downloaded, not read from the run folder
        assert Path(path).read_bytes() == (trained_run / "student" / "plots" / picture).read_bytes()


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_resuming_from_the_hub_offline_fails_within_two_seconds(tmp_path, monkeypatch, offline):
    import time

    import huggingface_hub.constants

    from duda_hf.training.resume import ResumeError, resolve_checkpoint

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ResumeError, match=r"--resume_from_checkpoint me/duda-run: cannot download the checkpoint, the Hub is unreachable"):
        resolve_checkpoint("me/duda-run", str(tmp_path))
    assert time.monotonic() - start < 2
