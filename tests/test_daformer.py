"""The DAFormer head as a transformers architecture, and DAFormer/HRDA/MIC checkpoints imported into it.

The head's formula is pinned on a hand-computed case; imported networks are checked against
`tests/helpers/mmseg_reference.py`, a forward pass written from the original code (fp32, |logits difference|
at most `PARITY`: the two differ only in the order of floating-point operations, about 2e-6 on these sizes).
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForSemanticSegmentation

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.import_checkpoint import main as import_main
from duda_hf.cli.training_run import build_trainer, run_training
from duda_hf.networks.daformer import DaformerConfig
from duda_hf.networks.daformer.modeling_daformer import DaformerDecodeHead, DaformerForSemanticSegmentation, hrda_fuse, hrda_windows
from duda_hf.networks.frozen import weights_sha256
from duda_hf.networks.loading import build_network

from .conftest import tiny_argv
from .helpers.mmseg_reference import daformer_state_dict, reference_hrda_logits, reference_logits, training_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PARITY = 1e-4
# A Python without duda_hf: its import fails as where the package is not installed.
WITHOUT_DUDA_HF = (
    "import sys\n"
    "class _NoDudaHf:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'duda_hf' or name.startswith('duda_hf.'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
    "sys.meta_path.insert(0, _NoDudaHf())\n"
)


def _images(shape=(2, 3, 64, 96), seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------------
# The architecture


def test_the_head_embeds_resizes_concatenates_in_level_order_and_fuses_by_hand():
    """One channel per level, constant maps 1, 2, 3, 4 at strides 4..32 (resizing a constant is exact), embeddings
    the identity, every convolution reading its centre tap only, BatchNorm at mean 0 and variance 1 (so each divides
    by b = sqrt(1 + 1e-5)):
    - ASPP dilation 1, 1x1 weights (1, 10, 100, 1000) over the concatenation: 4321 b (SegFormer's reversed order
      would give 1234 b);
    - ASPP dilation 2, depthwise centre taps 1 (each level times b), pointwise 2 x (1, 10, 100, 1000): 8642 b^2;
    - bottleneck, centre taps (1, 1): (4321 b + 8642 b^2) b; ReLUs pass positives; dropout off in eval;
    - classifier rows (1) and (-1), biases 0.5 and 0: (x + 0.5, -x)."""
    config = DaformerConfig(hidden_sizes=[1, 1, 1, 1], decoder_hidden_size=1, aspp_dilations=[1, 2], num_labels=2)
    head = DaformerDecodeHead(config).eval()
    with torch.no_grad():
        for embed in head.embed_layers:
            embed.proj.weight.fill_(1.0), embed.proj.bias.zero_()
        powers = torch.tensor([1.0, 10.0, 100.0, 1000.0])
        branch0, branch1 = head.fuse_layer.aspp_modules
        branch0.conv.weight.copy_(powers.reshape(1, 4, 1, 1))
        branch1.depthwise_conv.conv.weight.zero_()
        branch1.depthwise_conv.conv.weight[:, :, 1, 1] = 1.0
        branch1.pointwise_conv.conv.weight.copy_(2 * powers.reshape(1, 4, 1, 1))
        head.fuse_layer.bottleneck.conv.weight.zero_()
        head.fuse_layer.bottleneck.conv.weight[0, :, 1, 1] = 1.0
        head.classifier.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
        head.classifier.bias.copy_(torch.tensor([0.5, 0.0]))
        levels = [torch.full((1, 1, 8 // 2**i, 8 // 2**i), float(i + 1)) for i in range(4)]
        logits = head(levels)
    b = 1 / math.sqrt(1 + 1e-5)
    fused = (4321 * b + 8642 * b * b) * b
    assert logits.shape == (1, 2, 8, 8)
    assert logits[0, 0].flatten().tolist() == pytest.approx([fused + 0.5] * 64, rel=1e-6)
    assert logits[0, 1].flatten().tolist() == pytest.approx([-fused] * 64, rel=1e-6)


def test_the_mit_blocks_and_stages_normalise_with_the_originals_epsilon():
    """The original MiT (`mit_bN`: norm_layer=partial(nn.LayerNorm, eps=1e-6)) normalises its blocks and stages with
    1e-6 and its patch embeddings and key/value reduction with PyTorch's 1e-5; transformers' SegformerModel builds all
    of them with 1e-5 whatever `layer_norm_eps` says, so the DAFormer model sets the first kind itself."""
    network = build_network("mit-b0-daformer", "random")
    eps = {name: module.eps for name, module in network.segformer.named_modules() if isinstance(module, torch.nn.LayerNorm)}
    blocks = {name for name in eps if "blocks" in name and name.endswith(("layernorm_before", "layernorm_after"))}
    stages = {name for name in eps if name.endswith(".layer_norm") and name.count(".") == 2}  # stages.N.layer_norm
    assert len(blocks) == 2 * 8 and len(stages) == 4
    assert {eps[name] for name in blocks | stages} == {1e-6}
    assert {value for name, value in eps.items() if name not in blocks | stages} == {1e-5}
    assert network.config.layer_norm_eps == 1e-6


def test_the_presets_have_daformers_decoder_and_the_paper_sizes():
    b5 = build_network("mit-b5-daformer", "random")
    assert isinstance(b5, DaformerForSemanticSegmentation) and b5.config.decoder_hidden_size == 256
    assert b5.config.depths == [3, 6, 40, 3] and list(b5.config.aspp_dilations) == [1, 6, 12, 18]
    assert sum(p.numel() for p in b5.parameters()) == pytest.approx(85.2e6, rel=2e-3)  # DAFormer's 85.2M (paper, Tab. 1)
    out = b5.eval()(pixel_values=torch.zeros(1, 3, 64, 96), labels=torch.zeros(1, 64, 96, dtype=torch.long), output_hidden_states=True)
    assert out.logits.shape == (1, 19, 16, 24) and out.loss.ndim == 0 and len(out.hidden_states) == 4
    assert b5(pixel_values=torch.zeros(1, 3, 64, 96)).hidden_states is None
    assert build_network("tiny-daformer", "imagenet").config.hidden_sizes == [8, 16, 32, 64]  # small presets: random


def test_registration_follows_import_duda_hf_and_keeps_that_import_light(tmp_path):
    build_network("tiny-daformer", "random").save_pretrained(tmp_path / "tiny")
    code = (
        "import sys\nimport duda_hf\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForSemanticSegmentation\n"
        f"model = AutoModelForSemanticSegmentation.from_pretrained({str(tmp_path / 'tiny')!r})\n"
        "print(type(model).__name__, type(AutoConfig.for_model('daformer')).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["DaformerForSemanticSegmentation", "DaformerConfig"]


def test_a_daformer_encoder_starts_from_the_imagenet_mit_checkpoint(tmp_path, monkeypatch):
    """`--init imagenet`: the encoder comes from `nvidia/mit-b0` (here a copy in a fresh cache, offline), the head is
    new, and the ImageNet classifier is not used."""
    from huggingface_hub import constants
    from transformers import SegformerConfig, SegformerForImageClassification

    depths, widths = [2, 2, 2, 2], [32, 64, 160, 256]
    imagenet = SegformerForImageClassification(SegformerConfig(depths=depths, hidden_sizes=widths, num_labels=1000))
    repo = tmp_path / "hub" / "models--nvidia--mit-b0"
    imagenet.save_pretrained(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    network = build_network("mit-b0-daformer", "imagenet")
    assert isinstance(network, DaformerForSemanticSegmentation) and network.config.decoder_hidden_size == 256
    for (name, value), original in zip(network.segformer.state_dict().items(), imagenet.segformer.state_dict().values()):
        assert torch.equal(value, original), name
    assert network.segformer.stages[0].layer_norm.eps == 1e-6
    # DAFormer's feature distance reads a frozen copy of that ImageNet encoder
    from duda_hf.networks.duda_model import build_duda_model

    duda = build_duda_model("duda", "tiny", "mit-b0-daformer", fd_lambda=0.005)
    assert duda.imagenet_encoder is not None and not any(p.requires_grad for p in duda.imagenet_encoder.parameters())
    assert torch.equal(duda.imagenet_encoder.stages[3].layer_norm.weight, imagenet.segformer.stages[3].layer_norm.weight)


# ---------------------------------------------------------------------------------------------------------------------
# Importing DAFormer, HRDA and MIC checkpoints


def _import(capsys, checkpoint, out, *flags):
    status = import_main([str(checkpoint), "--out", str(out), *flags])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _logits(folder, images):
    network = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    with torch.no_grad():
        return network(pixel_values=images).logits


@pytest.fixture(scope="module")
def b0_training(tmp_path_factory):
    """A MiT-B0 DAFormer training checkpoint: three different networks under model., ema_model., imnet_model."""
    path = tmp_path_factory.mktemp("ckpt") / "iter_40000.pth"
    torch.save(training_checkpoint(*(daformer_state_dict("mit-b0", seed=seed) for seed in (1, 2, 3))), path)
    return path


@pytest.mark.parametrize(("network", "prefix"), [("student", "model."), ("teacher", "ema_model.")])
def test_a_training_checkpoint_imports_the_chosen_network_exactly(b0_training, tmp_path, capsys, network, prefix):
    status, out, err = _import(capsys, b0_training, tmp_path / "out", "--network", network)
    assert status == 0, err
    assert f"imported the {network} network" in out and "mit-b0 with the DAFormer head" in out
    other = "ema_model." if network == "student" else "model."
    assert f"{other} (234 tensors)" in out and "imnet_model. (234 tensors)" in out
    folder = tmp_path / "out"
    assert {p.name for p in folder.iterdir()} == {
        "config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_daformer.py", "configuration_daformer.py"
    }  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "daformer" and config["id2label"]["13"] == "car" and config["depths"] == [2, 2, 2, 2]
    assert config["auto_map"]["AutoModelForSemanticSegmentation"] == "modeling_daformer.DaformerForSemanticSegmentation"
    assert json.loads((folder / "preprocessor_config.json").read_text())["size"] == {"height": 512, "width": 1024}
    assert "iter_40000.pth" in (folder / "README.md").read_text()
    images = _images()
    state = torch.load(b0_training, weights_only=True)["state_dict"]
    expected = reference_logits(state, images, prefix)
    assert float((_logits(folder, images) - expected).abs().max()) <= PARITY
    wrong = reference_logits(state, images, other)
    assert float((_logits(folder, images) - wrong).abs().max()) > 0.1  # the other network is really another


@pytest.mark.slow
def test_mit_b5_published_and_training_checkpoints_import_exactly(tmp_path, capsys):
    """MiT-B5 (DAFormer's, HRDA's and MIC's encoder): a published file (the network without a prefix) and a training
    file whose three networks share the encoder's storage (saved once) but not the heads."""
    published = daformer_state_dict("mit-b5", seed=5)
    torch.save(published, tmp_path / "daformer_b5.pth")
    images = _images((1, 3, 64, 64))
    status, out, err = _import(capsys, tmp_path / "daformer_b5.pth", tmp_path / "published", "--encoder", "mit-b5")
    assert status == 0, err
    assert "published network" in out and "left out" not in out
    assert float((_logits(tmp_path / "published", images) - reference_logits(published, images)).abs().max()) <= PARITY
    teacher = {k: v if k.startswith("backbone.") or not v.is_floating_point() else 0.9 * v for k, v in published.items()}
    checkpoint = training_checkpoint(published, teacher, published)
    del published, teacher
    torch.save(checkpoint, tmp_path / "latest.pth")
    status, out, err = _import(capsys, tmp_path / "latest.pth", tmp_path / "teacher", "--network", "teacher")
    assert status == 0, err
    expected = reference_logits(checkpoint["state_dict"], images, "ema_model.")
    assert float((_logits(tmp_path / "teacher", images) - expected).abs().max()) <= PARITY


def test_an_import_computes_what_the_original_computes_where_the_epsilon_matters(tmp_path, capsys):
    """Patch embeddings that normalise to a spread of 1e-3: each block's LayerNorm then sees variances near 1e-6,
    where eps 1e-6 and 1e-5 give different networks. The import matches the original; the same weights with
    transformers' own 1e-5 do not."""
    state = daformer_state_dict("mit-b0", seed=7)
    for i in range(1, 5):
        state[f"backbone.patch_embed{i}.norm.weight"].mul_(1e-3)
        state[f"backbone.patch_embed{i}.norm.bias"].mul_(1e-3)
    torch.save(state, tmp_path / "small.pth")
    assert _import(capsys, tmp_path / "small.pth", tmp_path / "out")[0] == 0
    images = _images()
    expected = reference_logits(state, images)
    network = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert float((network(pixel_values=images).logits - expected).abs().max()) <= PARITY
        for module in network.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = 1e-5
        assert float((network(pixel_values=images).logits - expected).abs().max()) > 100 * PARITY


def test_an_hrda_checkpoint_imports_with_its_scale_attention_and_predicts_as_hrda_does(tmp_path, capsys):
    """Against `reference_hrda_logits`, written from HRDA's `encode_decode`, `extract_slide_feat` and `HRDAHead`: the
    context at half resolution, overlapping 32x48 detail windows (3 x 4 of them on 64x112, the last column flush with
    the border), the scale attention."""
    state = daformer_state_dict("mit-b0", hrda=True, seed=8)
    torch.save(training_checkpoint(state, state, state), tmp_path / "hrda.pth")
    status, out, err = _import(capsys, tmp_path / "hrda.pth", tmp_path / "out", "--hrda_detail_crop", "32", "48")
    assert status == 0, err
    assert "HRDA fused inference" in out and "scale_attention" not in out  # nothing left out of the network
    card = (tmp_path / "out" / "README.md").read_text()
    assert "overlapping 48x32 (W x H) detail windows" in card and "2048x1024 (W x H)" in card
    network = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "out").eval()
    assert network.config.hrda_scales == [0.5, 1.0] and network.config.hrda_detail_crop == [32, 48]
    assert network.config.hrda_attention_width == 256 and network.config.hrda_attention_classwise
    images = _images((2, 3, 64, 112))
    expected = reference_hrda_logits(state, images, (32, 48))
    with torch.no_grad():
        logits = network(pixel_values=images).logits
        # a side that is not a multiple of 8 (HRDA's own resize then misses the detail grid by a cell)
        assert network(pixel_values=_images((1, 3, 60, 100))).logits.shape == (1, 19, 15, 25)
    assert logits.shape == (2, 19, 16, 28) and float((logits - expected).abs().max()) <= PARITY
    # the scale attention counts: the head path alone is another prediction
    assert float((logits - F.interpolate(reference_logits(state, images), size=(16, 28))).abs().max()) > 100 * PARITY

    from duda_hf.export.onnx_export import OnnxExportError, export_onnx

    with pytest.raises(OnnxExportError, match="is an HRDA network"):  # its window grid depends on the image size
        export_onnx(tmp_path / "out")

    status, out, err = _import(capsys, tmp_path / "hrda.pth", tmp_path / "single", "--drop_scale_attention")
    assert status == 0, err
    assert "HRDA head path only" in out and "decode_head.scale_attention. (16 tensors)" in out
    assert "predicts at one scale" in (tmp_path / "single" / "README.md").read_text()
    assert float((_logits(tmp_path / "single", images) - reference_logits(state, images)).abs().max()) <= PARITY


def test_hrda_fuses_the_upsampled_context_and_the_detail_by_the_scale_attention_by_hand():
    context = torch.full((1, 1, 1, 1), 2.0)
    attention = torch.full((1, 1, 1, 1), 0.25)
    detail = torch.tensor([[[[4.0, 8.0], [0.0, -4.0]]]])
    # up((1 - 0.25) * 2) + up(0.25) * detail = 1.5 + detail / 4
    assert torch.equal(hrda_fuse(context, attention, detail, 2.0), torch.tensor([[[[2.5, 3.5], [1.5, 0.5]]]]))


@pytest.mark.parametrize(
    ("size", "crop", "stride", "windows"),
    [
        (1024, 512, 256, [(0, 512), (256, 768), (512, 1024)]),
        (100, 64, 32, [(0, 64), (32, 96), (36, 100)]),  # the last window flush with the end
        (70, 64, 32, [(0, 64), (6, 70)]),
        (50, 64, 32, [(0, 50)]),  # shorter than the crop: one window, the whole side
    ],
)
def test_hrdas_detail_windows(size, crop, stride, windows):
    assert hrda_windows(size, crop, stride) == windows


def test_an_hrda_network_teaches_frozen_and_trains_only_as_hrda(tmp_path, tiny_benchmark, capsys):
    state = daformer_state_dict("mit-b0", hrda=True, seed=8)
    torch.save(state, tmp_path / "hrda.pth")
    assert _import(capsys, tmp_path / "hrda.pth", tmp_path / "hrda", "--hrda_detail_crop", "32", "32")[0] == 0
    argv = tiny_argv(tiny_benchmark, tmp_path / "run", "--method", "distill", "--teacher", str(tmp_path / "hrda"), "--max_steps", "1")
    trainer = build_trainer(*parse_args(argv))
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))
    with pytest.raises(ValueError, match="the aux_student is an HRDA network .*: train it as HRDA with --hrda"):
        build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path / "aux", "--aux_student", str(tmp_path / "hrda"))))
    with pytest.raises(ValueError, match="the student is an HRDA network .*only the auxiliary student trains as HRDA"):
        build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path / "student", "--student", str(tmp_path / "hrda"))))
    hrda = build_trainer(
        *parse_args(tiny_argv(tiny_benchmark, tmp_path / "as_hrda", "--aux_student", str(tmp_path / "hrda"), "--hrda", "true"))
    )
    imported = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "hrda")
    assert torch.equal(hrda.model.aux_student.scale_attention.classifier.weight, imported.scale_attention.classifier.weight)  # its own kept


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda s: {**s, "decode_head.fuse_layer.image_pool.1.conv.weight": torch.zeros(256, 1024, 1, 1)},
            "could not be mapped: decode_head.fuse_layer.image_pool",
        ),
        (
            lambda s: {**s, "backbone.block1.0.attn.qkv.weight": torch.zeros(96, 32)},
            "could not be mapped: backbone.block1.0.attn.qkv.weight",
        ),
        (
            lambda s: {k: v for k, v in s.items() if k != "decode_head.fuse_layer.bottleneck.bn.running_var"},
            "missing keys: decode_head.fuse_layer.bottleneck.bn.running_var",
        ),
        (
            lambda s: {**{f"model.{k}": v for k, v in s.items()}, "discriminator.conv.weight": torch.zeros(1)},
            "belong to no network duda-hf knows: discriminator.conv.weight",
        ),
        (
            lambda s: (
                {k: v for k, v in s.items() if not k.startswith("decode_head.fuse_layer")}
                | {"decode_head.linear_fuse.conv.weight": torch.zeros(1)}
            ),
            "SegFormer's all-MLP head",
        ),
    ],
    ids=["unknown_head_key", "unknown_encoder_key", "missing_statistic", "unknown_network", "segformer_head"],
)
def test_a_key_that_cannot_be_mapped_is_named_and_nothing_is_written(tmp_path, capsys, make, message):
    torch.save(make(daformer_state_dict("mit-b0", seed=9)), tmp_path / "odd.pth")
    status, _out, err = _import(capsys, tmp_path / "odd.pth", tmp_path / "out")
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["odd.pth"]


def test_a_file_that_needs_more_than_weights_only_is_refused_in_one_line(tmp_path, capsys):
    import numpy as np

    checkpoint = training_checkpoint(*(daformer_state_dict("mit-b0", seed=1),) * 3)
    checkpoint["meta"]["hook_msgs"] = {"best_score": np.float64(0.683)}  # mmcv's EvalHook(save_best=...) writes one
    torch.save(checkpoint, tmp_path / "best.pth")
    status, _out, err = _import(capsys, tmp_path / "best.pth", tmp_path / "out")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "weights_only=True" in err and "numpy" in err and "If you trust the file" in err
    status, _out, err = _import(capsys, tmp_path / "best.pth", tmp_path / "out", "--network", "teacher")
    assert status == 2 and "weights_only=True" in err
    torch.save(daformer_state_dict("mit-b0", seed=1), tmp_path / "published.pth")
    status, _out, err = _import(capsys, tmp_path / "published.pth", tmp_path / "out", "--network", "teacher")
    assert status == 2 and "published checkpoint" in err and "no EMA teacher" in err


@pytest.mark.slow
def test_an_imported_folder_loads_with_transformers_alone(b0_training, tmp_path, capsys):
    """Where duda_hf cannot be imported, `trust_remote_code=True` runs the code the folder carries; without it,
    transformers refuses (its own rule for code from a model folder)."""
    assert _import(capsys, b0_training, tmp_path / "out")[0] == 0
    images = _images()
    torch.save(images, tmp_path / "images.pt")
    code = WITHOUT_DUDA_HF + (
        "import torch\nfrom transformers import AutoModelForSemanticSegmentation\n"
        "try:\n    import duda_hf\nexcept ModuleNotFoundError:\n    pass\nelse:\n    raise SystemExit('duda_hf importable')\n"
        f"model = AutoModelForSemanticSegmentation.from_pretrained({str(tmp_path / 'out')!r}, trust_remote_code=True).eval()\n"
        f"with torch.no_grad():\n    logits = model(pixel_values=torch.load({str(tmp_path / 'images.pt')!r})).logits\n"
        f"torch.save(logits, {str(tmp_path / 'logits.pt')!r})\nprint(type(model).__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("modeling_daformer") and "duda_hf" not in done.stdout
    expected = reference_logits(torch.load(b0_training, weights_only=True)["state_dict"], images, "model.")
    assert float((torch.load(tmp_path / "logits.pt") - expected).abs().max()) <= PARITY
    refused = subprocess.run(
        [sys.executable, "-c", WITHOUT_DUDA_HF + f"from transformers import AutoModelForSemanticSegmentation as A\nA.from_pretrained({str(tmp_path / 'out')!r})"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode != 0 and "trust_remote_code" in refused.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Training, resuming, exporting and serving DAFormer-head networks


DAFORMER_RUN = ("--student", "tiny-daformer", "--aux_student", "tiny-wide-daformer")


def test_the_daformer_heads_train_at_the_head_learning_rate(tiny_benchmark, tmp_path):
    trainer = build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path / "run", *DAFORMER_RUN, "--learning_rate", "0.001")))
    optimizer = trainer.create_optimizer()
    lr_of = {id(param): group["initial_lr"] for group in optimizer.param_groups for param in group["params"]}
    for role in ("student", "aux_student"):
        network = getattr(trainer.model, role)
        assert isinstance(network, DaformerForSemanticSegmentation)
        assert {lr_of[id(p)] for n, p in network.named_parameters() if n.startswith("decode_head.")} == {
            0.001 * trainer.args.head_lr_multiplier
        }
        assert {lr_of[id(p)] for p in network.segformer.parameters()} == {0.001}


@pytest.fixture(scope="module")
def daformer_run(tiny_benchmark, tmp_path_factory):
    """A 4-step DUDA run with DAFormer-head networks: evaluated, checkpointed at step 2, exported with ONNX."""
    output = tmp_path_factory.mktemp("daformer") / "run"
    argv = tiny_argv(
        tiny_benchmark, output, *DAFORMER_RUN, "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "steps",
        "--eval_steps", "4", "--export_onnx", "true",
    )  # fmt: skip
    results = run_training(*parse_args(argv))
    return output, results, argv


@pytest.mark.slow
def test_a_daformer_run_trains_evaluates_and_exports_with_onnx_parity(daformer_run):
    from duda_hf.export.onnx_export import OnnxSegmenter

    output, results, _argv = daformer_run
    assert {"student", "auxiliary", "teacher"} <= set(results["metrics"]) and results["metrics"]["student"]["num_images"] > 0
    student = output / "student"
    config = json.loads((student / "config.json").read_text())
    assert config["architectures"] == ["DaformerForSemanticSegmentation"] and (student / "modeling_daformer.py").is_file()
    card = (student / "README.md").read_text()
    assert "trust_remote_code=True" in card and "@huggingface/transformers" not in card  # transformers.js has no DAFormer
    network = AutoModelForSemanticSegmentation.from_pretrained(student).eval()
    pixels = _images((2, 3, 72, 120))
    with torch.no_grad():
        expected = network(pixel_values=pixels).logits
    logits = OnnxSegmenter(student / "onnx" / "model.onnx", threads=1)(pixel_values=pixels).logits
    assert logits.shape == expected.shape == (2, 19, 18, 30)
    assert float((logits - expected).abs().max()) <= 1e-3
    state = load_file(output / "checkpoint-2" / "model.safetensors")
    assert any(key.startswith("aux_student.decode_head.fuse_layer.aspp_modules.") for key in state)
    assert json.loads((output / "checkpoint-2" / "networks.json").read_text())["teacher"]["model_type"] == "daformer"


@pytest.mark.slow
def test_a_daformer_run_resumes_bit_identically(daformer_run, tiny_benchmark, tmp_path):
    output, _results, argv = daformer_run
    resumed = tmp_path / "resumed"
    shutil.copytree(output / "checkpoint-2", resumed / "checkpoint-2")
    argv = [a if a != str(output) else str(resumed) for a in argv]
    argv = argv[: argv.index("--export_onnx")] + ["--export_onnx", "false"]
    trainer = build_trainer(*parse_args(argv))
    trainer.train(resume_from_checkpoint=str(resumed / "checkpoint-2"))
    final = load_file(output / "checkpoint-4" / "model.safetensors")
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, final[name]), name


@pytest.mark.slow
def test_the_pipeline_serves_a_daformer_student_with_duda_hf_or_with_its_code(daformer_run):
    from PIL import Image
    from transformers import pipeline

    from duda_hf.data.labels import CITYSCAPES_CLASSES

    student = daformer_run[0] / "student"
    masks = pipeline("image-segmentation", model=str(student))(Image.new("RGB", (96, 48), (90, 90, 90)))
    assert masks and {m["label"] for m in masks} <= set(CITYSCAPES_CLASSES)
    code = WITHOUT_DUDA_HF + (
        "from PIL import Image\nfrom transformers import pipeline\n"
        f"out = pipeline('image-segmentation', model={str(student)!r}, trust_remote_code=True)(Image.new('RGB', (96, 48), (90, 90, 90)))\n"
        "print(sorted({o['label'] for o in out}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted({m["label"] for m in masks}) == eval(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_space_serves_a_daformer_student_when_trusted_and_says_how_when_not(daformer_run, tmp_path):
    """The Space installs transformers, not duda_hf: it runs the folder's code with DUDA_TRUST_REMOTE_CODE=1 only."""
    student = daformer_run[0] / "student"
    code = WITHOUT_DUDA_HF + (
        f"sys.path.insert(0, {str(ROOT / 'spaces' / 'duda-demo')!r})\n"
        "import segmenter\nfrom PIL import Image\n"
        "try:\n"
        f"    model = segmenter.load_segmenter({str(student)!r})\n"
        "except segmenter.ModelLoadError as error:\n    print('ERROR', error)\nelse:\n"
        "    labels, seconds = model.predict(Image.new('RGB', (128, 64), (90, 90, 90)))\n"
        "    print('OK', labels.shape, model.info.architecture)\n"
    )
    refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=_env(DUDA_TRUST_REMOTE_CODE=""))
    assert refused.returncode == 0, refused.stderr[-2000:]
    assert refused.stdout.startswith("ERROR") and "DUDA_TRUST_REMOTE_CODE=1" in refused.stdout
    served = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=_env(DUDA_TRUST_REMOTE_CODE="1"))
    assert served.returncode == 0, served.stderr[-2000:]
    assert served.stdout.split()[0] == "OK" and "DaformerForSemanticSegmentation" in served.stdout


def _env(**values):
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", **values}


def test_duda_evaluate_scores_an_imported_network(b0_training, tiny_benchmark, tmp_path, capsys):
    from duda_hf.cli.evaluate_duda import main as evaluate_main

    assert _import(capsys, b0_training, tmp_path / "imported")[0] == 0
    status = evaluate_main(
        [
            "--model",
            str(tmp_path / "imported"),
            "--dataset",
            tiny_benchmark["target_val"],
            "--output_dir",
            str(tmp_path / "eval"),
            "--eval_size",
            "64",
            "128",
        ]
    )
    assert status == 0, capsys.readouterr().err
    assert "mIoU" in capsys.readouterr().out


@pytest.mark.slow
def test_an_imported_network_on_the_hub_loads_with_transformers_alone(b0_training, tmp_path, capsys):
    """The imported folder as a Hub repo (through a local mirror): a Python without duda_hf downloads it by id, code
    included, and computes the original's logits."""
    from .test_hub import _serve_olah

    assert _import(capsys, b0_training, tmp_path / "imported")[0] == 0
    images = _images()
    torch.save(images, tmp_path / "images.pt")
    mirror = _serve_olah(tmp_path / "olah", {"me/daformer-gta2cs": tmp_path / "imported"})
    try:
        endpoint = next(mirror)
        code = WITHOUT_DUDA_HF + (
            "import torch\nfrom transformers import AutoModelForSemanticSegmentation\n"
            "model = AutoModelForSemanticSegmentation.from_pretrained('me/daformer-gta2cs', trust_remote_code=True).eval()\n"
            f"with torch.no_grad():\n    logits = model(pixel_values=torch.load({str(tmp_path / 'images.pt')!r})).logits\n"
            f"torch.save(logits, {str(tmp_path / 'logits.pt')!r})\n"
        )
        env = _env(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf_home"))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env, cwd=tmp_path)
    finally:
        next(mirror, None)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "hf_home").rglob("modeling_daformer.py")), "the code came through the mirror"
    expected = reference_logits(torch.load(b0_training, weights_only=True)["state_dict"], images, "model.")
    assert float((torch.load(tmp_path / "logits.pt") - expected).abs().max()) <= PARITY


@pytest.mark.slow
def test_an_imported_network_is_an_extra_teacher_and_a_checkpoint_role_is_a_daformer(
    b0_training, daformer_run, tiny_benchmark, tmp_path, capsys
):
    assert _import(capsys, b0_training, tmp_path / "imported")[0] == 0
    argv = tiny_argv(tiny_benchmark, tmp_path / "run", "--extra_teachers", str(tmp_path / "imported"), "--max_steps", "2")
    trainer = build_trainer(*parse_args(argv))
    (teacher,) = trainer.model.extra_teachers
    assert isinstance(teacher, DaformerForSemanticSegmentation) and not any(p.requires_grad for p in teacher.parameters())
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    role = build_network(f"{daformer_run[0] / 'checkpoint-2'}@teacher")
    assert isinstance(role, DaformerForSemanticSegmentation) and role.config.hidden_sizes == [16, 32, 64, 128]
    # the imported network as the frozen teacher of `--method distill`: the student alone learns from it
    argv = tiny_argv(
        tiny_benchmark, tmp_path / "distill", "--method", "distill", "--teacher", str(tmp_path / "imported"), "--max_steps", "2"
    )
    distill = build_trainer(*parse_args(argv))
    (teacher,) = distill.model.extra_teachers
    assert isinstance(teacher, DaformerForSemanticSegmentation) and distill.model.teacher is None
    before = weights_sha256(teacher)
    distill.train()
    assert weights_sha256(teacher) == before
    assert [e["loss"] for e in distill.state.log_history if "loss" in e] == pytest.approx(
        [e["loss_student_source"] + e["loss_student_mix"] for e in distill.state.log_history if "loss" in e], rel=1e-4
    )


@pytest.mark.parametrize(
    ("flags", "make", "message"),
    [
        (("--encoder", "mit-b7"), None, "--encoder must be one of mit-b0"),
        (
            ("--encoder", "mit-b5"),
            None,
            "does not match the checkpoint's encoder (depths [2, 2, 2, 2], widths [32, 64, 160, 256], which is mit-b0)",
        ),
        (("--aspp_dilations", "1", "6", "12"), None, "the ASPP has 4 branches but 3 dilations were given"),
        ((), lambda s: {k: v for k, v in s.items() if not k.startswith("backbone.patch_embed")}, "no MiT encoder in the checkpoint"),
        ((), lambda s: {k: v[:7] if "conv_seg" in k else v for k, v in s.items()}, "predicts 7 classes, not the 19"),
        ((), lambda s: {k: v for k, v in s.items() if not k.startswith("backbone.block2.0.")}, "a stage has no first block"),
    ],
    ids=["unknown_encoder", "wrong_encoder", "dilations", "no_encoder", "classes", "no_first_block"],
)
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(tmp_path, capsys, flags, make, message):
    state = daformer_state_dict("mit-b0", seed=10)
    torch.save(make(state) if make else state, tmp_path / "odd.pth")
    status, _out, err = _import(capsys, tmp_path / "odd.pth", tmp_path / "out", *flags)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_odd_files_and_folders_are_refused_in_one_line_and_a_dataparallel_prefix_is_read(tmp_path, capsys):
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    torch.save(daformer_state_dict("mit-b0", seed=11), tmp_path / "good.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "good.pth").read_bytes()[:4096])
    for checkpoint, out, message in [
        (tmp_path / "text.pth", tmp_path / "a", "is not a readable PyTorch checkpoint"),
        (tmp_path / "truncated.pth", tmp_path / "b", "is not a readable PyTorch checkpoint"),
        (tmp_path / "missing.pth", tmp_path / "c", "does not exist"),
        (tmp_path / "good.pth", full, "already exists and is not an empty folder"),
    ]:
        status, _out, err = _import(capsys, checkpoint, out)
        assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err
        assert "If you trust the file" not in err
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    state = daformer_state_dict("mit-b0", seed=11)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "dp.pth")
    assert _import(capsys, tmp_path / "dp.pth", tmp_path / "dp")[0] == 0
    images = _images()
    assert float((_logits(tmp_path / "dp", images) - reference_logits(state, images)).abs().max()) <= PARITY


@pytest.mark.slow
def test_registration_survives_an_availability_check_and_a_transformers_imported_first():
    """accelerate's `is_transformers_available()` is `importlib.util.find_spec('transformers')`: it must not disarm the
    registration that waits for transformers to load; and importing transformers first registers at `import duda_hf`."""
    for code in (
        "import importlib.util, duda_hf\nimportlib.util.find_spec('transformers')\nfrom transformers import AutoConfig\n",
        "import transformers\nfrom transformers import AutoConfig\nimport duda_hf\n",
    ):
        code += "print(type(AutoConfig.for_model('daformer')).__name__)\n"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert done.returncode == 0 and done.stdout.strip() == "DaformerConfig", done.stderr[-2000:]


def test_a_teacher_in_train_mode_has_every_dropout_off_and_its_batchnorm_on():
    """`--teacher_train_mode` (DAFormer's teacher): BatchNorm on the batch's statistics, but no dropout of any kind, the
    DAFormer head's Dropout2d included, and no drop-path."""
    from duda_hf.networks.duda_model import build_duda_model

    duda = build_duda_model("duda", "tiny-daformer", "tiny-wide-daformer", init="random", teacher_train_mode=True)
    duda.train()
    dropouts = [m for m in duda.teacher.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    assert any(isinstance(m, torch.nn.Dropout2d) for m in dropouts) and not any(m.training for m in dropouts)
    assert all(m.training for m in duda.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not any(m.training for m in duda.teacher.modules() if type(m).__name__.endswith("DropPath"))
    images = torch.rand(2, 3, 64, 64)
    first, second = duda.teacher_logits(images)[0], duda.teacher_logits(images)[0]
    assert torch.equal(first, second)  # nothing random left in the teacher's forward
