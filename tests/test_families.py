"""Any AutoModelForSemanticSegmentation family as student, auxiliary student or extra teacher."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSemanticSegmentation, MobileViTV2Config

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.training_run import run_training
from duda_hf.data.labels import CITYSCAPES_CLASSES
from duda_hf.export.network import export_network
from duda_hf.networks.duda_model import build_duda_model
from duda_hf.networks.inputs import INPUT_NORMALIZATION_KEY, input_normalization, network_inputs
from duda_hf.networks.loading import ModelUnavailableError, build_network

from .conftest import tiny_argv

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("preset", "model_type", "stride"), [("mobilenetv2-deeplabv3-tiny", "mobilenet_v2", 8), ("mobilevitv2-tiny", "mobilevitv2", 8)]
)
def test_presets_of_other_families_predict_19_classes_at_their_stride(preset, model_type, stride):
    network = build_network(preset, "random").eval()  # batch 1: BatchNorm over the pooled ASPP branch needs eval
    assert network.config.model_type == model_type
    logits = network(pixel_values=torch.zeros(1, 3, 64, 96)).logits
    assert tuple(logits.shape) == (1, 19, 64 // stride, 96 // stride)
    assert network.config.id2label[0] == "road" and network.config.id2label[18] == "bicycle"


@pytest.mark.parametrize(
    ("student", "aux_student", "head_prefixes"),
    [
        ("tiny", "tiny-wide", ("decode_head.", "decode_head.")),
        ("mobilenetv2-deeplabv3-tiny", "tiny-wide", ("segmentation_head.", "decode_head.")),
        ("tiny", "mobilevitv2-tiny", ("decode_head.", "segmentation_head.")),
    ],
)
def test_every_familys_head_trains_at_the_head_learning_rate(tiny_benchmark, tmp_path, student, aux_student, head_prefixes):
    """The head of each trained network (every parameter outside its backbone) gets head_lr_multiplier x lr, the
    backbone 1x, whatever the family calls its head (MobileNetV2-DeepLabV3's and MobileViTV2's `segmentation_head`)."""
    from duda_hf.cli.training_run import build_trainer

    argv = tiny_argv(tiny_benchmark, tmp_path / "run", "--student", student, "--aux_student", aux_student, "--learning_rate", "0.001")
    trainer = build_trainer(*parse_args(argv))
    optimizer = trainer.create_optimizer()
    lr_of = {id(param): group["initial_lr"] for group in optimizer.param_groups for param in group["params"]}
    duda = trainer.model
    for role, prefix in (("student", head_prefixes[0]), ("aux_student", head_prefixes[1])):
        network = getattr(duda, role)
        backbone = {id(param) for param in network.base_model.parameters()}
        names = dict(network.named_parameters())
        head = [name for name, param in names.items() if id(param) not in backbone]
        assert head and all(name.startswith(prefix) for name in head), (role, head[:3])
        assert {lr_of[id(names[name])] for name in head} == {0.001 * trainer.args.head_lr_multiplier}
        assert {lr_of[id(param)] for param in network.base_model.parameters()} == {0.001}
    # every trained parameter is in one group, and nothing frozen (the teacher) is
    trained = [param for param in duda.parameters() if param.requires_grad]
    assert sorted(map(id, trained)) == sorted(lr_of)


@pytest.mark.slow
def test_a_mobilenet_student_distilled_from_the_segformer_pair_trains_and_exports(tiny_benchmark, tmp_path):
    output = tmp_path / "run"
    argv = tiny_argv(
        tiny_benchmark,
        output,
        "--student",
        "mobilenetv2-deeplabv3-tiny",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "4",
        "--export_onnx",
        "true",
    )
    before = build_network("mobilenetv2-deeplabv3-tiny", "random")
    results = run_training(*parse_args(argv))
    assert results["metrics"]["student"]["num_images"] > 0 and results["metrics"]["auxiliary"] is not None
    # the exported student is a plain MobileNetV2-DeepLabV3 with the Cityscapes labels and a fixed-size processor
    config = json.loads((output / "student" / "config.json").read_text())
    assert config["architectures"] == ["MobileNetV2ForSemanticSegmentation"] and len(config["id2label"]) == 19
    assert INPUT_NORMALIZATION_KEY not in config  # ImageNet statistics in RGB order: nothing to record
    processor = json.loads((output / "student" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.485, 0.456, 0.406] and processor["do_reduce_labels"] is False
    assert "MobileNetV2ForSemanticSegmentation" in (output / "student" / "README.md").read_text()
    assert (output / "student" / "onnx" / "model.onnx").is_file() and (output / "student" / "onnx" / "model_quantized.onnx").is_file()
    trained = AutoModelForSemanticSegmentation.from_pretrained(output / "student")
    changed = [name for name, p in trained.state_dict().items() if p.is_floating_point() and not torch.equal(p, before.state_dict()[name])]
    assert changed, "the student's weights did not move"
    # transformers alone runs it through the image-segmentation pipeline, with Cityscapes names
    code = (
        "import sys\nfrom PIL import Image\nfrom transformers import pipeline\n"
        "out = pipeline('image-segmentation', model=sys.argv[1])(Image.new('RGB', (96, 48), (90, 90, 90)))\n"
        "print(sorted({o['label'] for o in out}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(output / "student")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    labels = eval(done.stdout.strip().splitlines()[-1])  # a printed list of class names
    assert labels and set(labels) <= set(CITYSCAPES_CLASSES)


def test_a_mobilevit_auxiliary_student_and_teacher_for_a_segformer_student(tiny_benchmark, tmp_path):
    argv = tiny_argv(tiny_benchmark, tmp_path / "run", "--aux_student", "mobilevitv2-tiny", "--max_steps", "2")
    results = run_training(*parse_args(argv))
    assert set(results["metrics"]) >= {"student", "auxiliary", "teacher"}
    assert json.loads((tmp_path / "run" / "student" / "config.json").read_text())["model_type"] == "segformer"


def _foreign_folder(tmp_path: Path, processor: dict | None) -> Path:
    """A MobileViTV2 saved with 21 labels (like a Pascal VOC checkpoint), with or without an image processor."""
    folder = tmp_path / "foreign"
    network = AutoModelForSemanticSegmentation.from_config(MobileViTV2Config(width_multiplier=0.5, num_labels=21, aspp_out_channels=32))
    network.save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def test_a_loaded_network_gets_19_classes_and_keeps_its_processor_normalisation(tmp_path):
    folder = _foreign_folder(tmp_path, {"image_processor_type": "MobileViTImageProcessor", "do_flip_channel_order": True})
    network = build_network(str(folder), "random")
    assert network.config.num_labels == 19 and network.config.id2label[13] == "car"
    assert input_normalization(network) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), True)
    images = torch.tensor([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1)
    assert network_inputs(images, network).flatten().tolist() == pytest.approx([0.3, 0.2, 0.1])
    # a SegFormer student beside it keeps ImageNet's statistics: each network reads its own inputs
    duda = build_duda_model("duda", "tiny", str(folder), init="random")
    assert input_normalization(duda.student)[2] is False and input_normalization(duda.teacher)[2] is True
    # export: a MobileViT processor that flips the channels and resizes to the evaluation size
    export_network(network, tmp_path / "out", eval_size_hw=(64, 96))
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["do_flip_channel_order"] is True and processor["size"] == {"height": 64, "width": 96}
    assert processor["do_center_crop"] is False
    assert json.loads((tmp_path / "out" / "config.json").read_text())[INPUT_NORMALIZATION_KEY]["bgr"] is True


def test_a_non_segformer_folder_without_image_processor_fails_at_start_up(tmp_path):
    folder = _foreign_folder(tmp_path, None)
    with pytest.raises(ModelUnavailableError, match="no image processor .preprocessor_config.json.") as error:
        build_network(str(folder), "random")
    assert "mobilevitv2" in str(error.value) and "Add the preprocessor_config.json" in str(error.value)


@pytest.mark.slow
def test_a_non_segformer_student_exports_to_onnx_matching_pytorch(tmp_path):
    from duda_hf.export.onnx_export import OnnxSegmenter, export_onnx

    network = build_network("mobilenetv2-deeplabv3-tiny", "random").eval()
    folder = export_network(network, tmp_path / "student", eval_size_hw=(64, 96))
    result = export_onnx(folder)  # checks fp32 parity itself (1e-3) on another shape than the traced one
    assert set(result["files"]) == {"model.onnx", "model_quantized.onnx"}
    pixels = torch.randn(2, 3, 72, 120)
    with torch.no_grad():
        expected = network(pixel_values=pixels).logits
    logits = OnnxSegmenter(folder / "onnx" / "model.onnx", threads=1)(pixel_values=pixels).logits
    assert logits.shape == expected.shape == (2, 19, 9, 15)
    assert float((logits - expected).abs().max()) <= 1e-3
