"""DAFormer, HRDA and MIC checkpoints (mmseg/mmcv `.pth` files) as `DaformerForSemanticSegmentation` networks.

A training checkpoint of those repositories holds, under `state_dict`, the trained network (`model.`), its EMA
teacher (`ema_model.`), the frozen ImageNet network of the feature distance (`imnet_model.`) and, for MIC with a
separate teacher, `mic.`; a published checkpoint holds one network without a prefix. Each network is an mmseg
`EncoderDecoder`: the original MiT (`backbone.patch_embedN`, `backbone.blockN.M`, `backbone.normN`) and the DAFormer
head (`decode_head.…`; HRDA's `HRDAHead` nests it as `decode_head.head.…` beside `decode_head.scale_attention.…`,
which becomes the network's `scale_attention.…`: it then predicts with HRDA's fused multi-resolution inference).

The MiT keys are renamed to the names transformers' SegFormer checkpoints use on the Hub (`segformer.encoder.…`,
as in `nvidia/mit-b5`), which every transformers release loads; the fused key/value projection `attn.kv` is split in
two (its first half is the keys, as the original's `reshape(B, N, 2, heads, C/heads)` reads it). The head keys keep
their names (`DaformerForSemanticSegmentation` uses the original's), but `conv_seg`, which is `classifier`.

Every tensor key is mapped or the import fails naming the ones that are not.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from duda_hf.data.labels import ID2LABEL, LABEL2ID, NUM_CLASSES
from duda_hf.networks.daformer import DaformerConfig
from duda_hf.networks.presets import MIT_SIZES

NETWORK_PREFIXES = {"student": "model.", "teacher": "ema_model."}
# The other networks a training checkpoint holds, left out of an import (and said so).
OTHER_PREFIXES = ("model.", "ema_model.", "imnet_model.", "mic.")
MIT_HEADS = [1, 2, 5, 8]  # every MiT size (mit_b0..mit_b5 in the original)
DAFORMER_DILATIONS = (1, 6, 12, 18)  # lhoyer/DAFormer/configs/_base_/models/daformer_sepaspp_mitb5.py


class CheckpointImportError(ValueError):
    """A checkpoint that cannot be imported: the message says why and what to do."""


@dataclass
class ImportedCheckpoint:
    """The result of `convert_checkpoint`: the network's config and its weights under transformers' Hub names."""

    config: DaformerConfig
    state_dict: dict[str, torch.Tensor]
    network: str  # student, teacher, or published
    encoder: str  # mit-b0 .. mit-b5
    hrda: bool = False
    left_out: dict[str, int] = field(default_factory=dict)  # prefix -> number of tensors not imported


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict of an mmseg checkpoint (its `state_dict`, or the file itself when it is one), read with
    `torch.load(weights_only=True)`: nothing but tensors and plain containers is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointImportError(f"checkpoint '{path}' does not exist (pass the .pth file a DAFormer, HRDA or MIC run wrote)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found is None:  # not a forbidden object: a damaged file, or not a PyTorch file at all
            raise CheckpointImportError(f"'{path}' is not a readable PyTorch checkpoint ({_first_line(error)}); copy it again") from None
        reason = f"it holds a {found[1]} object"
        raise CheckpointImportError(
            f"'{path}' cannot be read with torch.load(weights_only=True): {reason}, and duda-hf unpickles nothing else "
            "(that could run code from the file). If you trust the file, keep its weights only: "
            f"python -c \"import torch; c = torch.load('{path}', weights_only=False); torch.save(c.get('state_dict', c), 'weights.pth')\" "
            "and import weights.pth"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as error:  # a truncated zip, a text file, ...
        raise CheckpointImportError(f"'{path}' is not a readable PyTorch checkpoint ({_first_line(error)}); copy it again") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not any(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointImportError(f"'{path}' holds no state dict of tensors (neither the file nor its 'state_dict' is one)")
    state = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if all(key.startswith("module.") for key in state):  # saved from a DataParallel wrapper (DAFormer's test.py strips it too)
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def select_network(state: dict[str, torch.Tensor], network: str) -> tuple[dict[str, torch.Tensor], str, dict[str, int]]:
    """The keys of one network, without its prefix: `(state, which, left_out)`.

    `network` 'student' takes `model.` and 'teacher' `ema_model.` of a training checkpoint; a published checkpoint (no
    prefix) is the network itself ('published').
    """
    if network not in NETWORK_PREFIXES:
        raise CheckpointImportError(f"--network must be 'student' or 'teacher', not '{network}'")
    training = any(key.startswith(OTHER_PREFIXES) for key in state)
    if not training:
        if network == "teacher":
            raise CheckpointImportError(
                "this is a published checkpoint (one network, keys such as 'backbone.…' without a prefix), so it has no "
                "EMA teacher: import it without --network teacher (a training checkpoint holds the teacher under 'ema_model.')"
            )
        return dict(state), "published", {}
    prefix = NETWORK_PREFIXES[network]
    chosen = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not chosen:
        held = sorted({key.split(".")[0] + "." for key in state})
        raise CheckpointImportError(f"the checkpoint has no '{prefix}' network for --network {network}; it holds {held}")
    left_out: dict[str, int] = {}
    unknown = []
    for key in state:
        if key.startswith(prefix):
            continue
        other = next((p for p in OTHER_PREFIXES if key.startswith(p)), None)
        if other is None:
            unknown.append(key)
        else:
            left_out[other] = left_out.get(other, 0) + 1
    if unknown:
        raise CheckpointImportError(f"{len(unknown)} keys belong to no network duda-hf knows: {_listing(unknown)}")
    return chosen, network, left_out


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" … ({len(keys) - limit} more)" if len(keys) > limit else "")


_BLOCK = re.compile(r"backbone\.block(\d)\.(\d+)\.(.+)")
_BLOCK_PARTS = {
    "norm1.": "layer_norm_1.",
    "attn.q.": "attention.self.query.",
    "attn.proj.": "attention.output.dense.",
    "attn.sr.": "attention.self.sr.",
    "attn.norm.": "attention.self.layer_norm.",
    "norm2.": "layer_norm_2.",
    "mlp.fc1.": "mlp.dense1.",
    "mlp.dwconv.dwconv.": "mlp.dwconv.dwconv.",
    "mlp.fc2.": "mlp.dense2.",
}


# The DAFormer head's keys (daformer_sepaspp_mitb5.py); anything else under decode_head. is not imported.
_ATTENTION_KEY = re.compile(  # HRDA's scale attention: a DAFormer head with a 1x1 conv-BN-ReLU fusion
    r"scale_attention\.(embed_layers\.\d+\.proj\.(weight|bias)"
    r"|fuse_layer\.(conv\.weight|bn\.(weight|bias|running_mean|running_var|num_batches_tracked))"
    r"|conv_seg\.(weight|bias))"
)
_HEAD_KEY = re.compile(
    r"decode_head\.(embed_layers\.\d+\.proj\.(weight|bias)"
    r"|fuse_layer\.(aspp_modules\.\d+\.((depthwise_conv|pointwise_conv)\.)?|bottleneck\.)"
    r"(conv\.weight|bn\.(weight|bias|running_mean|running_var|num_batches_tracked))"
    r"|conv_seg\.(weight|bias))"
)


def _map_backbone(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """One original MiT key as transformers' Hub names (two for `attn.kv`), or None for a key it does not know."""
    if match := re.fullmatch(r"backbone\.patch_embed(\d)\.(proj|norm)\.(weight|bias)", key):
        stage, part, kind = match.groups()
        return {f"segformer.encoder.patch_embeddings.{int(stage) - 1}.{'proj' if part == 'proj' else 'layer_norm'}.{kind}": value}
    if match := re.fullmatch(r"backbone\.norm(\d)\.(weight|bias)", key):
        return {f"segformer.encoder.layer_norm.{int(match[1]) - 1}.{match[2]}": value}
    if match := _BLOCK.fullmatch(key):
        stage, block, rest = match.groups()
        base = f"segformer.encoder.block.{int(stage) - 1}.{block}."
        if rest in ("attn.kv.weight", "attn.kv.bias"):
            keys, values = value.chunk(2, dim=0)
            kind = rest.rsplit(".", 1)[1]
            return {f"{base}attention.self.key.{kind}": keys, f"{base}attention.self.value.{kind}": values}
        for original, name in _BLOCK_PARTS.items():
            if rest.startswith(original) and rest[len(original) :] in ("weight", "bias"):
                return {base + name + rest[len(original) :]: value}
    return None


def _infer_encoder(state: dict[str, torch.Tensor], encoder: str | None) -> tuple[str, dict]:
    """The MiT size of the `backbone.` keys (depths and widths), checked against `encoder` when given."""
    try:
        hidden = [state[f"backbone.patch_embed{i}.proj.weight"].shape[0] for i in range(1, 5)]
    except KeyError:
        raise CheckpointImportError(
            "no MiT encoder in the checkpoint (no 'backbone.patch_embed1..4' keys): duda-hf imports MiT networks with the "
            "DAFormer head (DAFormer, HRDA and MIC's MiT-B5 configs)"
        ) from None
    depths = [1 + max((int(m[2]) for key in state if (m := _BLOCK.fullmatch(key)) and m[1] == str(i)), default=-1) for i in range(1, 5)]
    if any(f"backbone.block{i}.0.mlp.fc1.weight" not in state for i in range(1, 5)):
        raise CheckpointImportError("the MiT encoder is incomplete: a stage has no first block ('backbone.blockN.0.mlp.fc1.weight')")
    sr_ratios = [
        state[f"backbone.block{i}.0.attn.sr.weight"].shape[-1] if f"backbone.block{i}.0.attn.sr.weight" in state else 1 for i in range(1, 5)
    ]
    patch_sizes = [state[f"backbone.patch_embed{i}.proj.weight"].shape[-1] for i in range(1, 5)]
    mlp_ratios = [state[f"backbone.block{i}.0.mlp.fc1.weight"].shape[0] // hidden[i - 1] for i in range(1, 5)]
    found = next((name for name, (d, h, _) in MIT_SIZES.items() if list(d) == depths and list(h) == hidden), None)
    if encoder is not None:
        if encoder not in MIT_SIZES:
            raise CheckpointImportError(f"--encoder must be one of {', '.join(MIT_SIZES)}, not '{encoder}'")
        if found != encoder:
            raise CheckpointImportError(
                f"--encoder {encoder} does not match the checkpoint's encoder (depths {depths}, widths {hidden}"
                f"{', which is ' + found if found else ''})"
            )
    elif found is None:
        raise CheckpointImportError(
            f"the encoder (depths {depths}, widths {hidden}) is not one of the MiT sizes {', '.join(MIT_SIZES)}; duda-hf imports those only"
        )
    fields = {"depths": depths, "hidden_sizes": hidden, "sr_ratios": sr_ratios, "patch_sizes": patch_sizes, "mlp_ratios": mlp_ratios}
    return found, fields


def _head_keys(
    state: dict[str, torch.Tensor], drop_scale_attention: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], bool, int]:
    """The DAFormer head's keys under `decode_head.` and an HRDA scale attention's under `scale_attention.`:
    `(head keys, attention keys, hrda, scale-attention tensors dropped)`."""
    head = {key: value for key, value in state.items() if key.startswith("decode_head.")}
    hrda = any(key.startswith("decode_head.head.") for key in head)
    dropped, attention = 0, {}
    if hrda:
        attention = {key[len("decode_head.") :]: value for key, value in head.items() if key.startswith("decode_head.scale_attention.")}
        if drop_scale_attention:
            dropped, attention = len(attention), {}
        elif not attention:
            raise CheckpointImportError(
                "this HRDA checkpoint has no scale attention ('decode_head.scale_attention.'): HRDA's fixed attention is "
                "not imported; pass --drop_scale_attention to import the head path alone (one scale)"
            )
        others = [key for key in head if not key.startswith(("decode_head.head.", "decode_head.scale_attention."))]
        if others:
            raise CheckpointImportError(f"HRDA head keys duda-hf does not know: {_listing(others)}")
        head = {
            "decode_head." + key[len("decode_head.head.") :]: value for key, value in head.items() if key.startswith("decode_head.head.")
        }
    if not any(key.startswith("decode_head.fuse_layer.aspp_modules.") for key in head):
        kind = "SegFormer's all-MLP head" if any(key.startswith("decode_head.linear_") for key in head) else "another head"
        raise CheckpointImportError(
            f"the decode head is {kind}, not the DAFormer head with its ASPP fusion ('decode_head.fuse_layer.aspp_modules.'); "
            "duda-hf imports the DAFormer head (daformer_sepaspp_mitb5), as DAFormer, HRDA and MIC train it"
        )
    return head, attention, hrda, dropped


def convert_checkpoint(
    state: dict[str, torch.Tensor],
    network: str = "student",
    *,
    encoder: str | None = None,
    aspp_dilations: tuple[int, ...] = DAFORMER_DILATIONS,
    drop_scale_attention: bool = False,
    hrda_detail_crop: tuple[int, int] = (512, 512),
) -> ImportedCheckpoint:
    """One network of a DAFormer/HRDA/MIC state dict (`read_checkpoint`) as a `DaformerConfig` and weights under
    transformers' Hub names.

    Args:
        network: 'student' (`model.`, what the original repositories evaluate and publish) or 'teacher' (`ema_model.`).
        encoder: the MiT size (`mit-b5`), checked against the keys; None infers it.
        aspp_dilations: the ASPP's dilations (not stored in the weights; DAFormer's by default).
        drop_scale_attention: for an HRDA checkpoint, import the head path without the scale attention (one scale).
        hrda_detail_crop: for an HRDA checkpoint with its scale attention, the detail crop (height, width) its
            inference slides (not stored in the weights; HRDA's 512 x 512).
    """
    chosen, which, left_out = select_network(state, network)
    size, fields = _infer_encoder(chosen, encoder)
    head, attention, hrda, dropped = _head_keys(chosen, drop_scale_attention)
    if dropped:
        left_out["decode_head.scale_attention."] = dropped
    mapped: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in chosen.items():
        if key.startswith("backbone."):
            renamed = _map_backbone(key, value)
            if renamed is None:
                unmapped.append(key)
            else:
                mapped.update(renamed)
        elif not key.startswith("decode_head."):
            unmapped.append(key)
    for key, value in head.items():
        if not _HEAD_KEY.fullmatch(key):
            unmapped.append(key)
            continue
        mapped["decode_head.classifier." + key.rsplit(".", 1)[1] if key.startswith("decode_head.conv_seg.") else key] = value
    for key, value in attention.items():
        if not _ATTENTION_KEY.fullmatch(key):
            unmapped.append("decode_head." + key)
            continue
        mapped["scale_attention.classifier." + key.rsplit(".", 1)[1] if key.startswith("scale_attention.conv_seg.") else key] = value
    if unmapped:
        raise CheckpointImportError(f"{len(unmapped)} keys of the '{which}' network could not be mapped: {_listing(unmapped)}")

    def out_channels(key: str) -> int | None:
        return mapped[key].shape[0] if key in mapped else None

    classes = out_channels("decode_head.classifier.weight")
    if classes != NUM_CLASSES:
        raise CheckpointImportError(f"the classifier predicts {classes} classes, not the {NUM_CLASSES} Cityscapes classes duda-hf uses")
    width = out_channels("decode_head.fuse_layer.bottleneck.conv.weight")
    embed = out_channels("decode_head.embed_layers.0.proj.weight")
    if width is None or embed != width:
        raise CheckpointImportError(
            f"the head's embedding width ({embed}) and fused width ({width}) must be present and equal, as in DAFormer"
        )
    branches = len({key.split(".")[3] for key in mapped if key.startswith("decode_head.fuse_layer.aspp_modules.")})
    if branches != len(aspp_dilations):
        raise CheckpointImportError(
            f"the ASPP has {branches} branches but {len(aspp_dilations)} dilations were given ({list(aspp_dilations)}); "
            "pass --aspp_dilations with one per branch"
        )
    hrda_fields = {}
    if attention:
        attention_width = out_channels("scale_attention.fuse_layer.conv.weight")
        attention_outputs = out_channels("scale_attention.classifier.weight")
        if attention_width is None or attention_outputs not in (1, NUM_CLASSES):
            raise CheckpointImportError(
                f"the scale attention has width {attention_width} and {attention_outputs} outputs; HRDA's has a 1x1 fusion "
                f"and one output per class ({NUM_CLASSES}) or one"
            )
        hrda_fields = {
            "hrda_scales": [0.5, 1.0],
            "hrda_detail_crop": list(hrda_detail_crop),
            "hrda_attention_width": attention_width,
            "hrda_attention_classwise": attention_outputs == NUM_CLASSES,
        }
    config = DaformerConfig(
        **fields,
        **hrda_fields,
        num_attention_heads=list(MIT_HEADS),
        decoder_hidden_size=width,
        aspp_dilations=list(aspp_dilations),
        num_labels=NUM_CLASSES,
        id2label=dict(ID2LABEL),
        label2id=dict(LABEL2ID),
    )
    return ImportedCheckpoint(config=config, state_dict=mapped, network=which, encoder=size, hrda=hrda, left_out=left_out)


def load_imported(imported: ImportedCheckpoint, work_dir: str | Path):
    """The network of `imported`, loaded by transformers from its Hub names, with every key used exactly once.

    `work_dir` receives the intermediate folder (config.json, model.safetensors).
    """
    from safetensors.torch import save_file

    from duda_hf.networks.daformer.modeling_daformer import DaformerForSemanticSegmentation

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    imported.config.save_pretrained(work_dir)
    save_file({key: value.contiguous() for key, value in imported.state_dict.items()}, str(work_dir / "model.safetensors"))
    # mismatched shapes are reported below, in one line, rather than by transformers' own error
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()  # its load report and progress bar: the problems are said below, in one line
    logging.disable_progress_bar()
    try:
        model, info = DaformerForSemanticSegmentation.from_pretrained(work_dir, output_loading_info=True, ignore_mismatched_sizes=True)
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    problems = {name: info.get(name) for name in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(name)}
    if problems:
        detail = "; ".join(f"{name.replace('_', ' ')}: {_listing([str(k) for k in keys])}" for name, keys in problems.items())
        raise CheckpointImportError(f"the mapped weights do not fill the network exactly ({detail})")
    return model.eval()
