"""Segmentation networks by name or checkpoint, the DUDA container (students + EMA teacher), and export.

Any `AutoModelForSemanticSegmentation` family can be a student, the auxiliary student or an extra teacher
(tested: SegFormer, MobileNetV2-DeepLabV3, MobileViTV2): its logits, at whatever output stride, are
brought to the label size by the losses and the evaluation. The deployable student is a plain transformers model
of its own class; everything DUDA-specific lives in `DudaModel`, which is what the Trainer trains and checkpoints
(all networks in one `model.safetensors`).
"""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import (
    AutoModelForSemanticSegmentation,
    MobileNetV2Config,
    MobileViTV2Config,
    PretrainedConfig,
    PreTrainedModel,
    SegformerConfig,
    SegformerForSemanticSegmentation,
)

from .data.labels import ID2LABEL, LABEL2ID, NUM_CLASSES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# MiT encoder sizes (Xie et al., 2021; the nvidia/mit-bN configs). Decoder width: 256 for b0/b1, 768 above.
_MIT_SIZES = {
    "mit-b0": ([2, 2, 2, 2], [32, 64, 160, 256], 256),
    "mit-b1": ([2, 2, 2, 2], [64, 128, 320, 512], 256),
    "mit-b2": ([3, 4, 6, 3], [64, 128, 320, 512], 768),
    "mit-b3": ([3, 4, 18, 3], [64, 128, 320, 512], 768),
    "mit-b4": ([3, 8, 27, 3], [64, 128, 320, 512], 768),
    "mit-b5": ([3, 6, 40, 3], [64, 128, 320, 512], 768),
}
# Test and CPU sizes (random init only): an 8-64 student and a 16-128 large network. Trained from scratch on the
# synthetic benchmark the larger one is not stronger (docs/reproducibility.md, "The teacher premise").
_SMALL_SIZES = {
    "tiny": ([1, 1, 1, 1], [8, 16, 32, 64], 32),
    "tiny-wide": ([1, 1, 1, 1], [16, 32, 64, 128], 64),
}
# Small random-init presets of two other families, for tests and the CPU benchmark: a MobileNetV2 with a
# DeepLabV3 head (output stride 8) and a MobileViTV2 (output stride 8, a narrow ASPP).
_OTHER_FAMILY_PRESETS = {
    "mobilenetv2-deeplabv3-tiny": lambda: MobileNetV2Config(
        depth_multiplier=0.25, output_stride=8, image_size=128, classifier_dropout_prob=0.1, tf_padding=False
    ),
    "mobilevitv2-tiny": lambda: MobileViTV2Config(width_multiplier=0.5, output_stride=8, aspp_out_channels=64, image_size=128),
}
MODEL_PRESETS = tuple(_MIT_SIZES) + tuple(_SMALL_SIZES) + tuple(_OTHER_FAMILY_PRESETS)
# A network's input normalisation, kept in its config when it is not ImageNet's mean and std in RGB order (a network
# loaded with its own image processor, e.g. MobileViT's unnormalised BGR); checkpoints and exports carry it.
INPUT_NORMALIZATION_KEY = "duda_input_normalization"


def preset_config(name: str) -> PretrainedConfig:
    """The config of a preset name with 19 Cityscapes labels (no download)."""
    if name in _OTHER_FAMILY_PRESETS:
        config = _OTHER_FAMILY_PRESETS[name]()
        config.num_labels, config.id2label, config.label2id = NUM_CLASSES, dict(ID2LABEL), dict(LABEL2ID)
        return config
    depths, hidden_sizes, decoder = {**_MIT_SIZES, **_SMALL_SIZES}[name]
    heads = [1, 2, 5, 8] if name.startswith("mit") else [1, 1, 2, 4]
    return SegformerConfig(
        depths=depths,
        hidden_sizes=hidden_sizes,
        decoder_hidden_size=decoder,
        num_attention_heads=heads,
        num_labels=NUM_CLASSES,
        id2label=dict(ID2LABEL),
        label2id=dict(LABEL2ID),
    )


class ModelUnavailableError(OSError):
    """Weights that cannot be had: offline and not cached, or no such repo/folder."""


def _hub_reachable(timeout: float = 1.5) -> bool:
    """Fast check that the Hub endpoint accepts connections (a missing network otherwise costs ~23 s of retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def load_pretrained_network(
    name_or_path: str, *, hint: str = "pass --init random to train from scratch", model_class=AutoModelForSemanticSegmentation, **kwargs
) -> PreTrainedModel:
    """A 19-class segmentation network from a folder or Hub id: `from_pretrained` that uses the cache first and
    fails within seconds, with a way forward, when offline.

    Args:
        hint: the way forward the offline error offers first.
        model_class: `AutoModelForSemanticSegmentation` (any family) or one model class.
        kwargs: passed to `from_pretrained` (after the Cityscapes labels, which they may override).

    Raises:
        ModelUnavailableError: offline and not cached, or no such repo or folder.
    """
    kwargs = {"num_labels": NUM_CLASSES, "id2label": dict(ID2LABEL), "label2id": dict(LABEL2ID), **kwargs}
    if Path(name_or_path).is_dir():
        return model_class.from_pretrained(name_or_path, **kwargs)
    try:
        return model_class.from_pretrained(name_or_path, local_files_only=True, **kwargs)
    except OSError:
        pass
    if not _hub_reachable():
        raise ModelUnavailableError(
            f"Cannot load '{name_or_path}': it is not a local folder, not in the Hugging Face cache, and the Hub is "
            f"unreachable (offline or HF_HUB_OFFLINE=1). Either {hint}, or download the weights where there is network "
            f"(`hf download {name_or_path} --local-dir DIR`) and pass that folder."
        )
    try:
        return model_class.from_pretrained(name_or_path, **kwargs)
    except OSError as error:
        raise ModelUnavailableError(f"Cannot load '{name_or_path}' from the Hub: {error}") from error


def load_pretrained_segformer(name_or_path: str, **kwargs) -> SegformerForSemanticSegmentation:
    """`load_pretrained_network` for a SegFormer (the ImageNet MiT encoders, whose checkpoints are classifiers)."""
    return load_pretrained_network(name_or_path, model_class=SegformerForSemanticSegmentation, **kwargs)


def read_processor_config(name_or_path: str) -> dict | None:
    """The `preprocessor_config.json` of a folder or (cached) Hub repo, or None when it has none."""
    from transformers.utils import cached_file

    if Path(name_or_path).is_dir():
        path = Path(name_or_path) / "preprocessor_config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        path = cached_file(name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    return json.loads(Path(path).read_text()) if path else None


def adopt_input_normalization(network: PreTrainedModel, name_or_path: str) -> PreTrainedModel:
    """Keep the input normalisation of a loaded network's own image processor in its config (see
    `INPUT_NORMALIZATION_KEY`); a SegFormer without one keeps ImageNet's; any other family must have one."""
    processor = read_processor_config(name_or_path)
    if processor is None:
        if network.config.model_type == "segformer":
            return network
        raise ModelUnavailableError(
            f"'{name_or_path}' ({network.config.model_type}) has no image processor (preprocessor_config.json), so "
            "the normalisation its weights expect is unknown. Add the preprocessor_config.json of the model it came "
            "from to the folder (or pass a preset name to train from scratch)."
        )
    normalize = processor.get("do_normalize", "image_mean" in processor)
    mean = tuple(processor.get("image_mean", IMAGENET_MEAN)) if normalize else (0.0, 0.0, 0.0)
    std = tuple(processor.get("image_std", IMAGENET_STD)) if normalize else (1.0, 1.0, 1.0)
    bgr = bool(processor.get("do_flip_channel_order", False))
    if (mean, std, bgr) != (IMAGENET_MEAN, IMAGENET_STD, False):
        setattr(network.config, INPUT_NORMALIZATION_KEY, {"mean": list(mean), "std": list(std), "bgr": bgr})
    return network


def input_normalization(network: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """`(mean, std, bgr)` a network's inputs are normalised with: ImageNet's in RGB order unless its config says."""
    spec = getattr(getattr(network, "config", None), INPUT_NORMALIZATION_KEY, None)
    if not spec:
        return IMAGENET_MEAN, IMAGENET_STD, False
    return tuple(spec["mean"]), tuple(spec["std"]), bool(spec["bgr"])


def network_inputs(images: torch.Tensor, network: nn.Module) -> torch.Tensor:
    """`(B, 3, H, W)` RGB in [0, 1] normalised the way `network` expects (`input_normalization`)."""
    mean, std, bgr = input_normalization(network)
    inputs = normalize_images(images, mean, std)
    return inputs.flip(1) if bgr else inputs


def _check_labels(network: PreTrainedModel, name: str) -> PreTrainedModel:
    if getattr(network.config, "num_labels", None) != NUM_CLASSES:
        raise ValueError(
            f"'{name}' predicts {network.config.num_labels} classes, not the {NUM_CLASSES} Cityscapes classes; "
            "its head could not be set to 19 labels."
        )
    return network


NETWORKS_FILE = "networks.json"  # in a DudaTrainer checkpoint: each network's config by role


def load_from_checkpoint(checkpoint: str | os.PathLike, role: str) -> PreTrainedModel:
    """One network (`student`, `aux_student`, `teacher`, `extra_teacher_N`) of a DudaTrainer checkpoint folder."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    folder = Path(checkpoint)
    networks_path, weights_path = folder / NETWORKS_FILE, folder / "model.safetensors"
    if not networks_path.is_file() or not weights_path.is_file():
        raise ModelUnavailableError(
            f"'{folder}' is not a DUDA training checkpoint: it needs {NETWORKS_FILE} and model.safetensors "
            "(checkpoints written by duda-hf have both; an exported network folder is passed without '@role')"
        )
    configs = json.loads(networks_path.read_text())
    if role not in configs:
        raise ModelUnavailableError(f"checkpoint '{folder}' has no network '{role}'; it holds {sorted(configs)}")
    config = configs[role]
    network = AutoModelForSemanticSegmentation.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    prefix = "extra_teachers." + role.rsplit("_", 1)[1] + "." if role.startswith("extra_teacher_") else f"{role}."
    state = {key[len(prefix) :]: value for key, value in load_file(weights_path).items() if key.startswith(prefix)}
    network.load_state_dict(state, strict=True)
    return network


def build_network(name: str, init: str = "imagenet") -> PreTrainedModel:
    """A 19-class segmentation network by preset name (`mit-b0`..`mit-b5`, `tiny`, `tiny-wide`,
    `mobilenetv2-deeplabv3-tiny`, `mobilevitv2-tiny`), Hub id or local folder of any
    `AutoModelForSemanticSegmentation` family, or one network of a DudaTrainer checkpoint as `CHECKPOINT_DIR@role`
    (`student`, `aux_student`, `teacher`).

    A loaded network with another number of classes gets a new 19-class head (the rest of its weights kept); one
    that is not a SegFormer must come with its image processor, whose normalisation it is then trained with.

    Args:
        name: preset, Hub id or folder.
        init: for `mit-bN`: 'imagenet' loads the encoder from `nvidia/mit-bN` (decode head new);
            'random' builds the architecture from scratch. The small presets are always random.
    """
    if name in _SMALL_SIZES or (name in _MIT_SIZES and init == "random"):
        return SegformerForSemanticSegmentation(preset_config(name))
    if name in _OTHER_FAMILY_PRESETS:
        return AutoModelForSemanticSegmentation.from_config(preset_config(name))
    if name in _MIT_SIZES:
        # The ImageNet checkpoints are classifiers: the segmentation head is new by design.
        return load_pretrained_segformer(f"nvidia/{name}", ignore_mismatched_sizes=True)
    path, _, role = name.rpartition("@")
    if path and Path(path).is_dir():
        return load_from_checkpoint(path, role)
    # A head for another label set (e.g. 21 VOC classes) is replaced by a new 19-class one.
    network = load_pretrained_network(name, ignore_mismatched_sizes=True)
    return _check_labels(adopt_input_normalization(network, name), name)


build_segformer = build_network  # the name of the SegFormer-only days, kept for existing code


def normalize_images(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Normalisation of `(B, 3, H, W)` RGB in [0, 1]: ImageNet statistics (the exported image processor's) by default.

    Per channel with Python scalars: no statistics tensor is copied from the host, which on an accelerator
    would wait for every queued kernel.
    """
    return torch.cat([(images[:, c : c + 1] - m) / s for c, (m, s) in enumerate(zip(mean, std))], dim=1)


def _set_dropout_eval(module: nn.Module) -> None:
    for sub in module.modules():
        if isinstance(sub, nn.Dropout) or type(sub).__name__.endswith("DropPath"):
            sub.eval()


class InputCache:
    """One batch normalised for each network that reads it, computed once per distinct normalisation."""

    def __init__(self, images: torch.Tensor):
        self.images, self.normalized = images, {}

    def __call__(self, network: nn.Module) -> torch.Tensor:
        key = input_normalization(network)
        if key not in self.normalized:
            self.normalized[key] = network_inputs(self.images, network)
        return self.normalized[key]


class DudaModel(nn.Module):
    """The networks of one DUDA run, trained and checkpointed as one module.

    - `student`: the deployed network, trained by gradient.
    - `aux_student`: the large network (method 'duda' only), trained by gradient.
    - `teacher`: EMA of `aux_student` ('duda') or of `student` ('self_training'); no gradient.
    - `extra_teachers`: frozen networks fused with the teacher.
    - `ema_source`: the network the teacher follows.
    Buffers `class_discrepancy`/`class_seen` hold the inconsistency state so that resuming is exact.
    """

    def __init__(
        self,
        student: nn.Module,
        aux_student: nn.Module | None = None,
        method: str = "duda",
        *,
        extra_teachers: list[nn.Module] | None = None,
        imagenet_encoder: nn.Module | None = None,
        teacher_train_mode: bool = False,
    ):
        super().__init__()
        if method == "duda" and aux_student is None:
            raise ValueError("method='duda' needs an auxiliary student")
        self.method = method
        self.student = student
        self.aux_student = aux_student if method == "duda" else None
        self.teacher = None
        if method != "source_only":
            self.teacher = copy.deepcopy(self.ema_source)
            self.teacher.requires_grad_(False)
        self.extra_teachers = nn.ModuleList(extra_teachers or [])
        self.extra_teachers.requires_grad_(False)
        # Frozen ImageNet encoder for DAFormer's feature distance (None: feature distance off).
        self.imagenet_encoder = imagenet_encoder
        if imagenet_encoder is not None:
            imagenet_encoder.requires_grad_(False)
        self.teacher_train_mode = teacher_train_mode
        self.register_buffer("class_discrepancy", torch.zeros(NUM_CLASSES))
        self.register_buffer("class_seen", torch.zeros(NUM_CLASSES, dtype=torch.bool))
        self.train()

    def network_configs(self) -> dict:
        """Each network's transformers config by role, as written beside a checkpoint's weights (`NETWORKS_FILE`)."""
        roles = {"student": self.student, "aux_student": self.aux_student, "teacher": self.teacher}
        roles.update({f"extra_teacher_{i}": net for i, net in enumerate(self.extra_teachers)})
        return {role: net.config.to_dict() for role, net in roles.items() if net is not None}

    @property
    def ema_source(self) -> nn.Module:
        return self.aux_student if self.aux_student is not None else self.student

    def train(self, mode: bool = True) -> DudaModel:
        super().train(mode)
        # Trainer calls model.train() every step: frozen networks must stay in inference mode.
        if self.teacher is not None:
            self.teacher.train(mode and self.teacher_train_mode)
            _set_dropout_eval(self.teacher)
        self.extra_teachers.eval()
        if self.imagenet_encoder is not None:
            self.imagenet_encoder.eval()
        return self

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_features: bool = False,
        *,
        student_extra: torch.Tensor | None = None,
        aux: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One forward pass of the trained networks on `(B, 3, H, W)` RGB in [0, 1].

        Returns logits `(B, 19, H/4, W/4)` under `student_logits` and, for 'duda', `aux_logits`; with
        `output_features`, the last encoder stage of the network that gets the feature distance.
        `student_extra` (`(B', 3, H, W)`): more images for the student alone, in the same forward pass (its logits
        under `student_extra_logits`); `aux=False` leaves the auxiliary student out (the distillation stage).
        """
        if student_extra is not None:
            student_images = torch.cat([pixel_values, student_extra])
        else:
            student_images = pixel_values
        inputs = InputCache(student_images)
        outputs = {}
        student_out = self.student(pixel_values=inputs(self.student), output_hidden_states=output_features and self.aux_student is None)
        outputs["student_logits"] = student_out.logits
        if student_extra is not None:
            outputs["student_logits"], outputs["student_extra_logits"] = student_out.logits.split(pixel_values.shape[0])
        fd_out = student_out
        if self.aux_student is not None and aux:
            inputs = InputCache(pixel_values) if student_extra is not None else inputs
            fd_out = self.aux_student(pixel_values=inputs(self.aux_student), output_hidden_states=output_features)
            outputs["aux_logits"] = fd_out.logits
        if output_features:
            outputs["features"] = fd_out.hidden_states[-1]
        return outputs

    @torch.no_grad()
    def teacher_logits(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Logits of the EMA teacher and every extra teacher on `(B, 3, H, W)` RGB in [0, 1]."""
        inputs = InputCache(pixel_values)
        return [net(pixel_values=inputs(net)).logits for net in [self.teacher, *self.extra_teachers]]

    @torch.no_grad()
    def imagenet_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Last encoder stage of the frozen ImageNet encoder."""
        return self.imagenet_encoder(pixel_values=normalize_images(pixel_values), output_hidden_states=True).hidden_states[-1]

    @torch.no_grad()
    def update_teacher(self, step: int, ema_alpha: float) -> float:
        """EMA update after optimizer step `step` (0-based): alpha = min(1 - 1/(step+1), ema_alpha).

        Floating parameters and buffers (BatchNorm statistics) are averaged with fused `torch._foreach_*`
        ops; integer buffers (BatchNorm's counter) are copied. Returns alpha.
        """
        alpha = min(1 - 1 / (step + 1), ema_alpha)
        teacher_params = list(self.teacher.parameters())
        source_params = [p.detach() for p in self.ema_source.parameters()]
        teacher_float, source_float, teacher_int, source_int = [], [], [], []
        for t_buf, s_buf in zip(self.teacher.buffers(), self.ema_source.buffers()):
            (teacher_float if t_buf.is_floating_point() else teacher_int).append(t_buf)
            (source_float if s_buf.is_floating_point() else source_int).append(s_buf)
        teachers, sources = teacher_params + teacher_float, source_params + source_float
        torch._foreach_mul_(teachers, alpha)
        torch._foreach_add_(teachers, sources, alpha=1 - alpha)
        if teacher_int:
            torch._foreach_copy_(teacher_int, source_int)
        return alpha


def prepare_networks(duda: DudaModel, channels_last: bool = False, compile_options: dict | None = None) -> DudaModel:
    """Speed options of a run, applied in place to every network of `duda` (names and checkpoints unchanged).

    Args:
        channels_last: convolution weights in NHWC layout.
        compile_options: if given, `torch.compile` keyword arguments (`backend`, `mode`) for each network
            (`Module.compile`): the students, the EMA teacher, the extra teachers and the feature-distance encoder.
    """
    networks = [duda.student, duda.aux_student, duda.teacher, *duda.extra_teachers, duda.imagenet_encoder]
    for network in [n for n in networks if n is not None]:
        if channels_last:
            network.to(memory_format=torch.channels_last)
        if compile_options is not None:
            network.compile(**compile_options)
    return duda


def build_duda_model(
    method: str,
    student: str,
    aux_student: str | None = None,
    *,
    init: str = "imagenet",
    extra_teachers: list[str] | None = None,
    fd_lambda: float = 0.0,
    teacher_train_mode: bool = False,
) -> DudaModel:
    """Build every network of a run by name (see `build_segformer`).

    The feature-distance encoder is a frozen copy of the ImageNet network the trained large network
    starts from; with `init='random'` or a non-MiT preset there is none and the feature distance is off.
    """
    student_net = build_network(student, init)
    aux_net = build_network(aux_student, init) if method == "duda" else None
    fd_base = aux_net if aux_net is not None else student_net
    fd_name = aux_student if method == "duda" else student
    imagenet_encoder = None
    if fd_lambda > 0 and fd_name in _MIT_SIZES and init == "imagenet" and method != "source_only":
        imagenet_encoder = copy.deepcopy(fd_base.segformer)
    teachers = [build_network(name, init) for name in (extra_teachers or [])]
    return DudaModel(
        student_net, aux_net, method, extra_teachers=teachers, imagenet_encoder=imagenet_encoder, teacher_train_mode=teacher_train_mode
    )


def export_network(model: PreTrainedModel, output_dir: str | os.PathLike, eval_size_hw: tuple[int, int] | None = None) -> Path:
    """Write `model` as a plain transformers model of its own class: config (Cityscapes labels), safetensors, and an
    image processor that resizes to a fixed size and normalises as the network was trained.

    The processor is a `SegformerImageProcessor` (resize, rescale, normalise; it serves any family in the
    `image-segmentation` pipeline), or a `MobileViTImageProcessor` for a network trained on BGR inputs.

    Args:
        eval_size_hw: `(height, width)` the image processor resizes to (Cityscapes: 512, 1024); None keeps 512 x 512.
    """
    from transformers import MobileViTImageProcessor, SegformerImageProcessor

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.config.id2label = dict(ID2LABEL)
    model.config.label2id = dict(LABEL2ID)
    model.save_pretrained(output_dir)
    height, width = eval_size_hw or (512, 512)
    mean, std, bgr = input_normalization(model)
    size = {"height": height, "width": width}
    if bgr:  # MobileViT's processor: no normalisation, channels flipped
        if (mean, std) != ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)):
            raise ValueError("a BGR network with mean/std normalisation has no transformers image processor to export it with")
        processor = MobileViTImageProcessor(size=size, do_center_crop=False, do_flip_channel_order=True, do_reduce_labels=False)
    else:
        processor = SegformerImageProcessor(size=size, image_mean=list(mean), image_std=list(std), do_reduce_labels=False)
    processor.save_pretrained(output_dir)
    return output_dir


export_segformer = export_network  # the name of the SegFormer-only days, kept for existing code
