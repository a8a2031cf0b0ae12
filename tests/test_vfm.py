"""A vision foundation model network: transformers' UperNet on a DINOv2 backbone as the auxiliary student and as a
frozen teacher (`--method distill`), with DINOv2's patch-size inputs handled in training, whole and sliding-window
inference and the fusion with the student's logits (2-process DDP: tests/test_ddp.py)."""

import logging

import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model, UperNetConfig, UperNetForSemanticSegmentation

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.training_run import run_training
from duda_hf.evaluation.inference import predict_slide, predict_whole
from duda_hf.networks import loading
from duda_hf.networks.duda_model import DudaModel, head_parameters
from duda_hf.networks.inputs import input_multiple, run_network
from duda_hf.networks.loading import ModelUnavailableError, build_network, load_dinov2_upernet, without_unused_parameters
from duda_hf.networks.presets import preset_config

from .conftest import tiny_argv


def test_the_tiny_preset_is_an_upernet_on_dinov2_whose_head_is_everything_but_the_backbone():
    network = build_network("dinov2-upernet-tiny")
    assert isinstance(network, UperNetForSemanticSegmentation) and type(network.backbone).__name__ == "Dinov2Backbone"
    assert network.config.num_labels == 19 and network.auxiliary_head is None
    assert not [name for name, _ in network.named_parameters() if "mask_token" in name]
    head = {id(p) for p in head_parameters(network)}
    assert head == {id(p) for p in network.decode_head.parameters()}  # the head learning rate reaches UperNet's head only
    assert input_multiple(network) == 14
    assert [input_multiple(build_network(name)) for name in ("tiny", "mobilevitv2-tiny")] == [1, 1]


def test_what_a_forward_pass_without_labels_never_uses_gets_no_gradient():
    """UperNet's auxiliary head (its loss needs labels) goes, DINOv2's mask token is frozen: DDP waits for neither."""
    config = preset_config("dinov2-upernet-tiny")
    config.use_auxiliary_head = True
    config.backbone_config.use_mask_token = True
    network = UperNetForSemanticSegmentation(config)
    assert network.auxiliary_head is not None
    network = without_unused_parameters(network)
    assert network.auxiliary_head is None and network.config.use_auxiliary_head is False
    run_network(network, torch.rand(2, 3, 28, 28)).logits.sum().backward()  # 2: the pooling branch's BatchNorm trains
    unused = [name for name, p in network.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == [] and not network.backbone.embeddings.mask_token.requires_grad


@pytest.mark.parametrize("size", [(64, 50), (28, 42), (15, 14)])
def test_inputs_are_padded_to_whole_patches_and_the_logits_cropped_to_the_inputs(size):
    torch.manual_seed(0)
    network = build_network("dinov2-upernet-tiny").eval()
    images = torch.randn(2, 3, *size)
    pad_h, pad_w = -size[0] % 14, -size[1] % 14
    with torch.no_grad():
        logits = run_network(network, images).logits
        expected = network(pixel_values=F.pad(images, (0, pad_w, 0, pad_h))).logits[..., : size[0], : size[1]]
    assert logits.shape == (2, 19, *size) and torch.equal(logits, expected)
    segformer, other = build_network("tiny").eval(), torch.randn(1, 3, 64, 50)  # any other network is called as it is
    with torch.no_grad():
        assert torch.equal(run_network(segformer, other).logits, segformer(pixel_values=other).logits)


def test_every_pass_of_training_and_inference_gives_the_network_whole_patches_and_keeps_the_inputs_grid():
    """The auxiliary student's forward pass, the EMA teacher's pseudo-labels, whole and sliding-window inference."""
    torch.manual_seed(0)
    duda = DudaModel(build_network("tiny"), build_network("dinov2-upernet-tiny"), "duda")
    seen = []
    for network in (duda.aux_student, duda.teacher):
        network.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(tuple(kwargs["pixel_values"].shape[-2:])), with_kwargs=True
        )
    images = torch.rand(2, 3, 64, 50)
    outputs = duda(images, student_extra=images[:1], aux_extra=images[:1])
    assert outputs["aux_logits"].shape == (2, 19, 64, 50) and outputs["aux_extra_logits"].shape == (1, 19, 64, 50)
    (teacher,) = duda.teacher_logits(images)
    assert teacher.shape == (2, 19, 64, 50)
    duda.eval()
    assert predict_whole(duda.teacher, images, (64, 50)).shape == (2, 64, 50)
    assert predict_slide(duda.teacher, images, (64, 50), window_hw=(30, 45), stride_hw=(20, 30)).shape == (2, 64, 50)
    assert seen[:3] == [(70, 56), (70, 56), (70, 56)] and set(seen[3:]) == {(42, 56)}, seen


def test_sliding_windows_of_any_size_and_the_whole_image_agree_where_one_window_covers_the_image():
    torch.manual_seed(0)
    network = build_network("dinov2-upernet-tiny").eval()
    images = torch.randn(2, 3, 40, 60)
    whole = predict_whole(network, images, (40, 60))
    one_window = predict_slide(network, images, (40, 60), window_hw=(40, 60), stride_hw=(40, 60))
    assert torch.equal(whole, one_window)
    windows = predict_slide(network, images, (80, 120), window_hw=(30, 45), stride_hw=(20, 30))  # 30, 45: not multiples of 14
    assert windows.shape == (2, 80, 120)


def test_a_dinov2_upernet_trains_as_the_auxiliary_student_and_then_teaches_as_a_frozen_teacher(tiny_benchmark, tmp_path):
    flags = ("--kd_clean_target", "1", "--cwd_weight", "1", "--eval_strategy", "steps", "--eval_steps", "4")
    duda = run_training(*parse_args(tiny_argv(tiny_benchmark, tmp_path / "duda", "--aux_student", "dinov2-upernet-tiny", *flags)))
    assert {"student", "auxiliary", "teacher"} <= set(duda["metrics"])
    assert [entry["step"] for entry in duda["history"] if "eval_auxiliary_mIoU" in entry] == [4]
    aux_terms = [entry["loss_aux_source"] + entry["loss_aux_mix"] for entry in duda["train_history"]]
    assert len(aux_terms) == 4 and all(term > 0 for term in aux_terms)  # the DINOv2 UperNet learnt on every step
    # the exported EMA teacher, distilled into the student alone, beside a SegFormer teacher (fused logits of two
    # output strides: 1 for UperNet, 4 for SegFormer)
    teacher = str(tmp_path / "duda" / "teacher")
    argv = tiny_argv(tiny_benchmark, tmp_path / "distill", "--method", "distill", "--teacher", teacher, "tiny-wide", *flags)
    model_args, data_args, config = parse_args(argv)
    distill = run_training(model_args, data_args, config)
    assert distill["metrics"]["teacher"]["mIoU"] == duda["metrics"]["teacher"]["mIoU"]  # the same network, scored the same way
    logged = [entry for entry in distill["train_history"] if "loss_student_cwd" in entry]
    assert logged and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in distill["train_history"])


def test_init_imagenet_loads_the_dinov2_backbone_and_says_so_in_one_line(tmp_path, caplog):
    torch.manual_seed(0)
    # facebook/dinov2-small's shape (its config: 518-pixel position grid, patch 14), random weights
    checkpoint = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=518))
    checkpoint.save_pretrained(tmp_path / "dinov2-small")
    with caplog.at_level(logging.INFO, logger="duda_hf.networks.loading"):
        network = load_dinov2_upernet("dinov2-small-upernet", repo=str(tmp_path / "dinov2-small"))
    assert caplog.messages == [f"dinov2-small-upernet: backbone from {tmp_path / 'dinov2-small'} (DINOv2), new 19-class UperNet head"]
    mine, theirs = network.backbone.state_dict(), checkpoint.state_dict()
    for key in ("embeddings.patch_embeddings.projection.weight", "encoder.layer.11.mlp.fc2.weight", "layernorm.weight"):
        assert torch.equal(mine[key], theirs[key]), key
    assert network.backbone.config.out_features == ["stage3", "stage6", "stage9", "stage12"]


def test_init_imagenet_offline_and_not_cached_fails_at_once_with_the_ways_forward(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelUnavailableError, match=r"Cannot load 'facebook/dinov2-base'.*pass --init random.*hf download"):
        build_network("dinov2-base-upernet", init="imagenet")
    assert isinstance(build_network("dinov2-base-upernet", init="random"), UperNetForSemanticSegmentation)


def test_an_upernet_from_a_folder_keeps_no_auxiliary_head(tmp_path):
    config = UperNetConfig(backbone_config=preset_config("dinov2-upernet-tiny").backbone_config, hidden_size=32, num_labels=19)
    UperNetForSemanticSegmentation(config).save_pretrained(tmp_path / "upernet")
    (tmp_path / "upernet" / "preprocessor_config.json").write_text(
        '{"image_processor_type": "SegformerImageProcessor", "do_normalize": true, '
        '"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}'
    )
    network = build_network(str(tmp_path / "upernet"))
    assert network.auxiliary_head is None and network.config.use_auxiliary_head is False


def test_the_onnx_export_refuses_a_vit_backbone_network_it_would_cut(tmp_path):
    from duda_hf.export.network import export_network
    from duda_hf.export.onnx_export import OnnxExportError, export_onnx

    folder = export_network(build_network("dinov2-upernet-tiny"), tmp_path / "upernet")
    with pytest.raises(OnnxExportError, match="UperNetForSemanticSegmentation on a ViT backbone .* whole 14-pixel patches"):
        export_onnx(folder)
    assert not (folder / "onnx").exists()
