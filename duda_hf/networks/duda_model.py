"""`DudaModel`: the networks of one run (students, EMA teacher, extra teachers), trained and checkpointed as one module."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from duda_hf.data.labels import NUM_CLASSES
from duda_hf.networks.daformer.modeling_daformer import hrda_resize
from duda_hf.networks.frozen import FROZEN_SOURCES_KEY, frozen_record, role_prefix
from duda_hf.networks.inputs import InputCache, normalize_images, run_network
from duda_hf.networks.loading import build_network, with_hrda
from duda_hf.networks.presets import MODEL_PRESETS, mit_encoder

logger = logging.getLogger(__name__)


def _set_dropout_eval(module: nn.Module) -> None:
    for sub in module.modules():
        if isinstance(sub, nn.modules.dropout._DropoutNd) or type(sub).__name__.endswith("DropPath"):  # Dropout2d too
            sub.eval()


def _running_statistics_for_single_values(module: nn.modules.batchnorm._BatchNorm, args: tuple) -> None:
    """A train-mode teacher's BatchNorm that gets one value per channel (DeepLabV3's image pooling on a batch of one
    image) has no batch statistics: it normalises with its running ones (the EMA's) for that call."""
    values = args[0]
    module.duda_train_mode = module.training
    if module.training and values.numel() <= values.shape[1]:
        module.training = False


def _restore_train_mode(module: nn.modules.batchnorm._BatchNorm, args: tuple, output) -> None:
    module.training = getattr(module, "duda_train_mode", module.training)


def head_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The parameters of a segmentation network's head: every parameter outside its backbone (`base_model`, the
    pretrained encoder, or for the families built on a transformers backbone, UperNet's, its `backbone`), whatever the
    family calls the head (SegFormer's `decode_head`, MobileNetV2-DeepLabV3's and MobileViTV2's `segmentation_head`,
    UperNet's `decode_head`). A network that is its own base model and has no `backbone` has no separate head."""
    backbone = getattr(network, "backbone", None)
    if not isinstance(backbone, nn.Module):
        backbone = getattr(network, "base_model", network)
    if backbone is network:
        return []
    in_backbone = {id(param) for param in backbone.parameters()}
    return [param for param in network.parameters() if id(param) not in in_backbone]


class DudaModel(nn.Module):
    """The networks of one DUDA run, trained and checkpointed as one module.

    - `student`: the deployed network, trained by gradient.
    - `aux_student`: the large network (method 'duda' only), trained by gradient.
    - `teacher`: EMA of `aux_student` ('duda') or of `student` ('self_training'); no gradient; None for 'distill'
      and 'source_only'.
    - `extra_teachers`: frozen networks fused with the teacher ('duda'), or the frozen teachers themselves
      ('distill', at least one).
    - `ema_source`: the network the teacher follows.
    Buffers `class_discrepancy`/`class_seen` hold the inconsistency state so that resuming is exact.

    `frozen_sources` (role -> source: `imagenet_encoder`, `extra_teacher_N`) names the frozen networks that are a
    function of a source (`build_duda_model` fills it): checkpoints leave their weights out (`checkpoint_state_dict`),
    `load_state_dict` keeps the rebuilt ones where a state dict lacks them, and `networks.json` records where each comes
    from (duda_hf/networks/frozen.py).
    """

    # read by Trainer when a checkpoint lacks some of the model's weights (it then warns; a PreTrainedModel's attribute)
    _keys_to_ignore_on_save = None

    def __init__(
        self,
        student: nn.Module,
        aux_student: nn.Module | None = None,
        method: str = "duda",
        *,
        extra_teachers: list[nn.Module] | None = None,
        imagenet_encoder: nn.Module | None = None,
        teacher_train_mode: bool = True,
        frozen_sources: dict[str, str] | None = None,
        hrda: bool = False,
    ):
        super().__init__()
        if method == "duda" and aux_student is None:
            raise ValueError("method='duda' needs an auxiliary student")
        if method == "distill" and not extra_teachers:
            raise ValueError("method='distill' needs at least one frozen teacher (extra_teachers)")
        self.hrda = hrda
        for role, network in (("student", student), ("aux_student", aux_student if method == "duda" else None)):
            if getattr(getattr(network, "config", None), "hrda_scales", None) and not (hrda and role == "aux_student"):
                way = (
                    "train it as HRDA with --hrda"
                    if role == "aux_student"
                    else "only the auxiliary student trains as HRDA (--hrda); as the student, import it with "
                    "--drop_scale_attention (its head path, one scale)"
                )
                raise ValueError(f"the {role} is an HRDA network (a scale attention beside its head): {way}")
        self.method = method
        self.student = student
        self.aux_student = aux_student if method == "duda" else None
        self.teacher = None
        if method in ("duda", "self_training"):
            self.teacher = copy.deepcopy(self.ema_source)
            self.teacher.requires_grad_(False)
            if teacher_train_mode:
                # BatchNorm on the batch's statistics, as DAFormer's teacher; its running statistics, which only the
                # evaluation and the export read (eval mode), are left to the EMA: in train mode a BatchNorm that
                # does not track them normalises with the batch's and updates none of its buffers
                for module in self.teacher.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.track_running_stats = False
                        module.register_forward_pre_hook(_running_statistics_for_single_values)
                        module.register_forward_hook(_restore_train_mode)
        self.extra_teachers = nn.ModuleList(extra_teachers or [])
        self.extra_teachers.requires_grad_(False)
        # Frozen ImageNet encoder for DAFormer's feature distance (None: feature distance off).
        self.imagenet_encoder = imagenet_encoder
        if imagenet_encoder is not None:
            imagenet_encoder.requires_grad_(False)
        self.teacher_train_mode = teacher_train_mode
        self.frozen_sources = dict(frozen_sources or {})
        unknown = sorted(set(self.frozen_sources) - set(self._frozen_networks()))
        if unknown:
            raise ValueError(f"frozen_sources names {unknown}, which this model does not have (roles: {sorted(self._frozen_networks())})")
        self._frozen_records: dict | None = None  # computed once (`build_duda_model`, else the first save): frozen
        self.register_buffer("class_discrepancy", torch.zeros(NUM_CLASSES))
        self.register_buffer("class_seen", torch.zeros(NUM_CLASSES, dtype=torch.bool))
        self.train()

    def network_configs(self) -> dict:
        """What `networks.json` holds beside a checkpoint's weights: each network's transformers config by role, and
        under `frozen_sources` where each frozen network left out of the weights comes from (`frozen.frozen_record`)."""
        roles = {"student": self.student, "aux_student": self.aux_student, "teacher": self.teacher}
        roles.update({f"extra_teacher_{i}": net for i, net in enumerate(self.extra_teachers)})
        configs = {role: net.config.to_dict() for role, net in roles.items() if net is not None}
        configs[FROZEN_SOURCES_KEY] = self.frozen_records()  # {} too: a checkpoint that holds every network's weights
        return configs

    def _frozen_networks(self) -> dict[str, nn.Module]:
        networks = {f"extra_teacher_{i}": net for i, net in enumerate(self.extra_teachers)}
        if self.imagenet_encoder is not None:
            networks["imagenet_encoder"] = self.imagenet_encoder
        return networks

    def frozen_records(self) -> dict:
        """Role -> `frozen_record` (source, Hub revision, weights' SHA-256) of each network in `frozen_sources`."""
        if self._frozen_records is None:
            networks = self._frozen_networks()
            self._frozen_records = {role: frozen_record(networks[role], source) for role, source in self.frozen_sources.items()}
        return self._frozen_records

    def frozen_prefixes(self) -> tuple[str, ...]:
        """The state-dict prefixes of the networks in `frozen_sources` (left out of checkpoints)."""
        return tuple(role_prefix(role) for role in self.frozen_sources)

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict a checkpoint stores: everything but the frozen networks rebuilt from their sources."""
        prefixes = self.frozen_prefixes()
        return {key: value for key, value in self.state_dict().items() if not (prefixes and key.startswith(prefixes))}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`, where the networks of `frozen_sources` absent from `state_dict` (a checkpoint
        written without them) keep the weights they were rebuilt with; a state dict that has them (an earlier
        checkpoint) loads them as before."""
        prefixes = self.frozen_prefixes()
        if prefixes:
            own = {key: value for key, value in self.state_dict().items() if key.startswith(prefixes)}
            state_dict = {**own, **state_dict}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

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
        aux_extra: torch.Tensor | None = None,
        aux: bool = True,
        aux_detail_box: tuple[int, int, int, int] | None = None,
        student_scale: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """One forward pass of the trained networks on `(B, 3, H, W)` RGB in [0, 1].

        Returns logits `(B, 19, H/4, W/4)` under `student_logits` and, for 'duda', `aux_logits`; with
        `output_features`, the last encoder stage of the network that gets the feature distance.
        `student_extra` (`(B', 3, H, W)`): more images for the student alone, in the same forward pass (its logits
        under `student_extra_logits`); `aux_extra` the same for the auxiliary student (`aux_extra_logits`);
        `aux=False` leaves the auxiliary student out (the distillation stage).
        HRDA (`--hrda`): `aux_detail_box` is the auxiliary student's detail crop `(y1, y2, x1, x2)` for every image of its
        batch; its fused logits are then `aux_logits`, the detail crop's own `aux_detail_logits` (and
        `aux_extra_detail_logits`), its features the context's; `student_scale` below 1 shows the student its images
        at that scale (`--hrda_student_input context`).
        """
        batch = pixel_values.shape[0]
        student_images = pixel_values if student_extra is None else torch.cat([pixel_values, student_extra])
        aux_images = pixel_values if aux_extra is None else torch.cat([pixel_values, aux_extra])
        inputs = InputCache(student_images)
        outputs = {}
        student_inputs = inputs(self.student) if student_scale == 1 else hrda_resize(inputs(self.student), student_scale)
        student_out = run_network(self.student, student_inputs, output_hidden_states=output_features and self.aux_student is None)
        outputs["student_logits"], outputs["student_extra_logits"] = _split_extra(student_out.logits, batch, student_extra)
        fd_out = student_out
        if self.aux_student is not None and aux:
            aux_inputs = inputs if aux_images is student_images else InputCache(aux_images)  # one normalisation when shared
            hrda = {} if aux_detail_box is None else {"hrda_detail_box": aux_detail_box}
            fd_out = run_network(self.aux_student, aux_inputs(self.aux_student), output_hidden_states=output_features, **hrda)
            outputs["aux_logits"], outputs["aux_extra_logits"] = _split_extra(fd_out.logits, batch, aux_extra)
            if aux_detail_box is not None:
                outputs["aux_detail_logits"], outputs["aux_extra_detail_logits"] = _split_extra(fd_out.detail_logits, batch, aux_extra)
        if output_features:
            outputs["features"] = fd_out.hidden_states[-1]
        return {name: value for name, value in outputs.items() if value is not None}

    @torch.no_grad()
    def teacher_logits(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Logits of the EMA teacher (none for 'distill') and every extra teacher on `(B, 3, H, W)` RGB in [0, 1]."""
        inputs = InputCache(pixel_values)
        return [run_network(net, inputs(net)).logits for net in [self.teacher, *self.extra_teachers] if net is not None]

    @torch.no_grad()
    def imagenet_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Last encoder stage of the frozen ImageNet encoder."""
        return self.imagenet_encoder(pixel_values=normalize_images(pixel_values), output_hidden_states=True).hidden_states[-1]

    @torch.no_grad()
    def update_teacher(self, iteration: int, ema_alpha: float) -> float:
        """One EMA update: alpha = min(1 - 1/(iteration+1), ema_alpha) (DAFormer's `_update_ema`; `iteration` is the
        optimizer steps done with DAFormer's schedule, `DudaConfig.ema_iteration`).

        Floating parameters and buffers (BatchNorm statistics) are averaged with fused `torch._foreach_*`
        ops; integer buffers (BatchNorm's counter) are copied. Returns alpha.
        """
        alpha = min(1 - 1 / (iteration + 1), ema_alpha)
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


def _split_extra(logits: torch.Tensor, batch: int, extra: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits of the first `batch` images, and those of the `extra` images after them (None without extra)."""
    return (logits, None) if extra is None else (logits[:batch], logits[batch:])


def build_duda_model(
    method: str,
    student: str,
    aux_student: str | None = None,
    *,
    init: str = "imagenet",
    extra_teachers: list[str] | None = None,
    fd_lambda: float = 0.0,
    teacher_train_mode: bool = True,
    hrda: dict | None = None,
) -> DudaModel:
    """Build every network of a run by name (see `build_network`); for 'distill', `extra_teachers` are its frozen
    teachers.

    `hrda` (keywords of `loading.with_hrda`) makes the auxiliary student an HRDA network trained as HRDA.

    The feature-distance encoder is a frozen copy of the ImageNet network the trained large network
    starts from; with `init='random'` or a non-MiT preset there is none and the feature distance is off.
    """
    student_net = build_network(student, init)
    aux_net = build_network(aux_student, init) if method == "duda" else None
    if hrda is not None and aux_net is not None:  # `with_hrda`'s keywords: context_scale, detail_crop, attention_classwise
        aux_net = with_hrda(aux_net, **hrda)
    fd_base = aux_net if aux_net is not None else student_net
    fd_name = aux_student if method == "duda" else student
    imagenet_encoder = None
    frozen_sources = {}
    if fd_lambda > 0 and mit_encoder(fd_name) and init == "imagenet" and method in ("duda", "self_training"):
        imagenet_encoder = copy.deepcopy(fd_base.segformer)
        frozen_sources["imagenet_encoder"] = f"nvidia/{mit_encoder(fd_name)}"
    teachers = [build_network(name, init) for name in (extra_teachers or [])]
    if method == "distill":
        for name in (name for name in extra_teachers if name in MODEL_PRESETS):
            logger.warning(
                "--teacher %s is a preset: a network with a new head that has learnt nothing of the task, so its "
                "pseudo-labels are noise; distil an adapted network (a folder, a Hub id, an imported checkpoint or "
                "CHECKPOINT_DIR@teacher)",
                name,
            )
    # a teacher loaded from a folder or a Hub id is a function of it (a folder by its absolute path, so that
    # `CHECKPOINT@extra_teacher_N` rebuilds it from anywhere); a preset is built at random, and a `CHECKPOINT@role`
    # may be rotated away by its run's --save_total_limit: those two stay in the checkpoint's weights
    for i, name in enumerate(extra_teachers or []):
        if name not in MODEL_PRESETS and "@" not in name:
            frozen_sources[f"extra_teacher_{i}"] = str(Path(name).absolute()) if Path(name).is_dir() else name
    duda = DudaModel(
        student_net,
        aux_net,
        method,
        extra_teachers=teachers,
        imagenet_encoder=imagenet_encoder,
        teacher_train_mode=teacher_train_mode,
        frozen_sources=frozen_sources,
        hrda=hrda is not None and aux_net is not None,
    )
    duda.frozen_records()  # now, so that each Hub revision recorded is the one just loaded
    return duda
