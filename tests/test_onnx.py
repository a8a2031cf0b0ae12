"""The student as ONNX (duda_hf.export.onnx_export, duda-export-onnx): the transformers.js layout, dynamic height and width
against PyTorch, the int8 file, the errors, and an atomic write."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason='pip install -e ".[onnx]"')
onnx = pytest.importorskip("onnx", reason='pip install -e ".[onnx]"')

from duda_hf.export.onnx_export import FP32_TOLERANCE, OPSET, OnnxExportError, OnnxSegmenter, export_onnx

# int8 (dynamic, uint8 weights per tensor) against PyTorch on a random image: the share of pixels with the same argmax.
# every test here exports ONNX: the slow lane (docs/contributing.md)
pytestmark = pytest.mark.slow
MIN_INT8_ARGMAX_AGREEMENT = 0.95
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _student(folder: Path) -> Path:
    from duda_hf.export.network import export_network
    from duda_hf.networks.loading import build_network

    torch.manual_seed(0)
    model = build_network("tiny", "random")
    with torch.no_grad():  # logits of a trained network's scale (a std of a few units), not init's ~1e-3
        model.decode_head.classifier.weight.mul_(1000)
    return export_network(model, folder, (64, 128))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny student exported by the console command `duda-export-onnx`: (folder, the command's stdout, its stderr)."""
    folder = _student(tmp_path_factory.mktemp("onnx") / "student")
    command = Path(sys.executable).parent / "duda-export-onnx"
    assert command.is_file(), "console command duda-export-onnx is not installed; run pip install -e . again"
    done = subprocess.run([str(command), "--model_dir", str(folder)], capture_output=True, text=True, env=ENV, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done.stdout, done.stderr


def test_the_command_writes_the_transformers_js_layout(exported):
    folder, stdout, _ = exported
    assert {"config.json", "preprocessor_config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == ["model.onnx", "model_quantized.onnx"]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".onnx-")], "no staging folder is left behind"
    assert f"wrote {folder / 'onnx'} (opset {OPSET}" in stdout and "model_quantized.onnx" in stdout


def test_the_command_shows_a_progress_bar_with_the_time_left_on_stderr(exported):
    """One bar on stderr: the exporter's four stages, the int8 file and the check, with the time left; stdout keeps the
    summary alone, and the files are those the layout test above expects."""
    import re

    _, stdout, stderr = exported
    states = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.startswith("ONNX export:")]
    assert states and re.match(r"ONNX export: +0%\|.*\| 0/6 \[", states[0]), states
    assert re.match(r"ONNX export: 100%\|.*\| 6/6 \[\d\d:\d\d<00:00", states[-1]), states
    assert any(re.search(r"\| [1-5]/6 \[\d\d:\d\d<\d\d:\d\d", state) for state in states), "a time left while it runs"
    for phase in ("torch.export", "int8 quantization", "parity check on 1 image"):
        assert any(phase in state for state in states), phase
    assert "ONNX export" not in stdout and stdout.startswith("wrote ")


def test_the_graph_has_one_input_and_output_with_dynamic_batch_height_width(exported):
    model = onnx.load(exported[0] / "onnx" / "model.onnx")
    assert [(entry.domain, entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx")] == [("", OPSET)]
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert graph_input.name == "pixel_values" and graph_output.name == "logits"
    dims = graph_input.type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True] and dims[1].dim_value == 3
    assert all(not node.metadata_props for node in model.graph.node), "the exporter's debug records are stripped"


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 120, 72)], ids=["64x96", "2x120x72"])
def test_fp32_logits_match_pytorch_at_other_sizes_than_the_traced_one(exported, shape):
    from transformers import SegformerForSemanticSegmentation

    folder = exported[0]
    model = SegformerForSemanticSegmentation.from_pretrained(folder).eval()
    pixels = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model(pixel_values=pixels).logits
    logits = OnnxSegmenter(folder / "onnx" / "model.onnx", threads=1)(pixel_values=pixels).logits
    assert logits.shape == reference.shape == (shape[0], 19, -(-shape[2] // 4), -(-shape[3] // 4))
    assert reference.std() > 0.5, "logits of a real scale, so that the tolerance means something"
    assert float((logits - reference).abs().max()) <= FP32_TOLERANCE


def test_int8_is_dynamic_uint8_and_agrees_with_pytorch(exported):
    from transformers import SegformerForSemanticSegmentation

    folder = exported[0]
    quantized = onnx.load(folder / "onnx" / "model_quantized.onnx")
    operators = {node.op_type for node in quantized.graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger"} <= operators and "Conv" not in operators
    weights = {init.name: init.data_type for init in quantized.graph.initializer}
    conv_weights = [node.input[1] for node in quantized.graph.node if node.op_type == "ConvInteger"]
    assert conv_weights and all(weights[name] == onnx.TensorProto.UINT8 for name in conv_weights), "onnxruntime-web has no int8 ConvInteger"
    model = SegformerForSemanticSegmentation.from_pretrained(folder).eval()
    pixels = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        reference = model(pixel_values=pixels).logits.argmax(1)
    prediction = OnnxSegmenter(folder / "onnx" / "model_quantized.onnx", threads=1)(pixel_values=pixels).logits.argmax(1)
    agreement = float((prediction == reference).float().mean())
    assert agreement >= MIN_INT8_ARGMAX_AGREEMENT, agreement


def test_logits_come_back_in_the_inputs_dtype(exported):
    pixels = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
    logits = OnnxSegmenter(exported[0] / "onnx" / "model.onnx", threads=1)(pixel_values=pixels).logits
    assert logits.dtype == torch.float64 and logits.device == pixels.device


def test_a_failed_export_leaves_the_previous_onnx_folder_as_it_was(exported, tmp_path):
    import shutil

    folder = Path(shutil.copytree(exported[0], tmp_path / "student"))
    before = {p.name: p.read_bytes() for p in (folder / "onnx").iterdir()}
    with pytest.raises(OnnxExportError, match="differ from PyTorch's .* nothing was written"):
        export_onnx(folder, quantize=False, tolerance=-1.0)  # every export fails this check, after writing the staging folder
    assert {p.name: p.read_bytes() for p in (folder / "onnx").iterdir()} == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in exported[0].iterdir())


def test_missing_folder_missing_weights_and_old_opset_are_explained(tmp_path):
    with pytest.raises(OnnxExportError, match="is not a folder.*OUTPUT_DIR/student"):
        export_onnx(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OnnxExportError, match="has no config.json.*Copy the whole exported folder"):
        export_onnx(tmp_path / "empty")
    folder = _student(tmp_path / "student")
    (folder / "model.safetensors").unlink()
    with pytest.raises(OnnxExportError, match="has no model.safetensors; copy the whole exported folder"):
        export_onnx(folder)
    with pytest.raises(OnnxExportError, match=f"opset 17.*pass --opset {OPSET}"):
        export_onnx(folder, opset=17)
    assert not (folder / "onnx").exists()


def test_the_command_ends_with_one_error_line_for_a_missing_folder(tmp_path):
    command = Path(sys.executable).parent / "duda-export-onnx"
    done = subprocess.run(
        [str(command), "--model_dir", str(tmp_path / "nowhere")], capture_output=True, text=True, env=ENV, timeout=300, check=False
    )
    assert done.returncode == 2
    message = (
        f"error: --model_dir '{tmp_path / 'nowhere'}' is not a folder. Pass an exported model folder: a training run writes one "
        "to OUTPUT_DIR/student (config.json, model.safetensors, preprocessor_config.json)."
    )
    assert done.stderr.strip().splitlines() == [message]
    assert done.stdout == ""


def test_export_onnx_at_the_end_of_training_is_pushed_with_the_student_and_the_card_says_how(tiny_benchmark, tmp_path, monkeypatch):
    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.training_run import run_training
    from duda_hf.export import hub

    from .conftest import tiny_argv
    from .test_hub import RecordingApi

    RecordingApi.calls = []
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    argv = tiny_argv(tiny_benchmark, tmp_path / "run", "--max_steps", "2", "--export_onnx", "true", "--push_to_hub", "true")
    run_training(*parse_args([*argv, "--hub_model_id", "me/duda-onnx"]))
    student = tmp_path / "run" / "student"
    uploads = [c[2] for c in RecordingApi.calls if c[0] == "upload_folder"]
    assert uploads[-1]["path_in_repo"] is None  # the repo root: Python, ONNX Runtime and transformers.js read one repo
    assert uploads[-1]["files"] == [
        "README.md",
        "config.json",
        "model.safetensors",
        "onnx/model.onnx",
        "onnx/model_quantized.onnx",
        "plots/miou_over_training.png",
        "plots/per_class_iou.png",
        "preprocessor_config.json",
    ]
    card = (student / "README.md").read_text()
    assert "### ONNX Runtime and transformers.js" in card
    assert 'hf_hub_download("me/duda-onnx", "onnx/model.onnx")' in card and '"me/duda-onnx", { dtype: "q8" }' in card


def test_a_card_without_onnx_files_does_not_mention_them(tmp_path):
    from duda_hf.export.model_card import build_model_card

    metrics = {"mIoU": 0.5, "per_class_iou": {"road": 0.5}, "num_images": 1}
    card = str(
        build_model_card({"student": metrics, "recipe": {"student": "tiny"}}, "me/m", architecture="MobileNetV2ForSemanticSegmentation")
    )
    assert "ONNX" not in card and "plain `MobileNetV2ForSemanticSegmentation`" in card and "**MobileNetV2 (tiny)**" in card
