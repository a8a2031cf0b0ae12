"""Networks from a preset, a folder, a Hub id or a training checkpoint's role, with clear errors offline."""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

from transformers import (
    AutoImageProcessor,
    AutoModelForSemanticSegmentation,
    BaseImageProcessor,
    Dinov2Backbone,
    PreTrainedModel,
    SegformerForSemanticSegmentation,
)

from duda_hf.data.labels import ID2LABEL, LABEL2ID, NUM_CLASSES
from duda_hf.data.remote import hub_reachable
from duda_hf.networks.daformer.modeling_daformer import DaformerDecodeHead, DaformerForSemanticSegmentation
from duda_hf.networks.frozen import FROZEN_SOURCES_KEY, check_frozen_networks, frozen_record, role_prefix
from duda_hf.networks.inputs import IMAGENET_MEAN, IMAGENET_STD, INPUT_NORMALIZATION_KEY
from duda_hf.networks.presets import (
    DAFORMER_SUFFIX,
    DINOV2_PRESETS,
    OTHER_FAMILY_PRESETS,
    dinov2_repo,
    mit_encoder,
    preset_config,
    random_only,
)

logger = logging.getLogger(__name__)


class ModelUnavailableError(OSError):
    """Weights that cannot be had: offline and not cached, or no such repo/folder."""


@contextmanager
def _without_progress_bars():
    """transformers' progress bars (the weight-loading one) off for the block, then as they were."""
    from transformers.utils import logging as transformers_logging

    if not transformers_logging.is_progress_bar_enabled():
        yield
        return
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.enable_progress_bar()


def load_pretrained_network(
    name_or_path: str,
    *,
    hint: str = "pass --init random to train from scratch",
    model_class=AutoModelForSemanticSegmentation,
    progress: bool = True,
    **kwargs,
) -> PreTrainedModel:
    """A 19-class segmentation network from a folder or Hub id: `from_pretrained` that uses the cache first and
    fails within seconds, with a way forward, when offline.

    Args:
        hint: the way forward the offline error offers first.
        model_class: `AutoModelForSemanticSegmentation` (any family) or one model class.
        progress: False hides transformers' weight-loading bar when the weights are already here (a folder or the
            cache); a download keeps its bars.
        kwargs: passed to `from_pretrained` (after the Cityscapes labels, which they may override; with `config`, the
            labels are the config's). With `output_loading_info=True` the result is `(network, loading_info)`.

    Raises:
        ModelUnavailableError: offline and not cached, or no such repo or folder.
    """
    if "config" not in kwargs:  # with a config object, from_pretrained passes other keywords to the model's __init__
        # The labels alone set the number of classes (a config's num_labels is len(id2label)); num_labels as well
        # would make transformers warn that 19 does not match the checkpoint's own id2label (1000 ImageNet classes).
        kwargs = {"id2label": dict(ID2LABEL), "label2id": dict(LABEL2ID), **kwargs}
    quiet = nullcontext if progress else _without_progress_bars
    if Path(name_or_path).is_dir():
        with quiet():
            return model_class.from_pretrained(name_or_path, **kwargs)
    try:
        with quiet():
            return model_class.from_pretrained(name_or_path, local_files_only=True, **kwargs)
    except OSError:
        pass
    if not hub_reachable():
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


# An ImageNet MiT checkpoint (`nvidia/mit-bN`) is a classifier: loaded into a segmentation network, its 1000-class
# classifier is not used and the decode head is new, by design. Anything else the load report lists is not expected.
IMAGENET_CLASSIFIER_PREFIX = "classifier."
NEW_HEAD_PREFIX = "decode_head."


def _emit(records: list[logging.LogRecord]) -> None:
    for record in records:
        logging.getLogger(record.name).handle(record)


@contextmanager
def _held_load_report():
    """Hold back transformers' load report (a warning of `transformers.modeling_utils`) during the block; yields the
    list of held log records, for the caller to `_emit` or drop. An error in the block emits them (transformers' load
    errors refer to the report)."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return True

    source = logging.getLogger("transformers.modeling_utils")
    source.addFilter(hold)
    try:
        yield held
    except BaseException:
        source.removeFilter(hold)
        _emit(held)
        raise
    finally:
        source.removeFilter(hold)


def _count(keys: list[str], noun: str) -> str:
    return f"{len(keys)} {noun}{'' if len(keys) == 1 else 's'}"


def _some(keys: list[str], shown: int = 4) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def load_imagenet_encoder(name: str) -> PreTrainedModel:
    """`mit-bN` or `mit-bN-daformer` with the encoder of the ImageNet checkpoint `nvidia/mit-bN` and a new 19-class
    head, said in one line (logged at INFO): `mit-b0: encoder from nvidia/mit-b0 (ImageNet), new 19-class SegFormer
    head`.

    transformers' load report (the unused ImageNet classifier, every weight of the new head) is shown only when the
    checkpoint differs in another way: an encoder weight missing (it would start random), a weight not used other
    than the classifier's, or a weight of another shape. Then a warning after it names those weights.
    """
    encoder = mit_encoder(name)
    if encoder is None:
        raise ValueError(f"'{name}' is not an MiT preset (mit-b0..mit-b5, with or without {DAFORMER_SUFFIX})")
    repo = f"nvidia/{encoder}"
    daformer = name.endswith(DAFORMER_SUFFIX)
    if daformer:  # the DAFormer head's architecture is the preset's; the checkpoint has only the encoder
        model = {"model_class": DaformerForSemanticSegmentation, "config": preset_config(name)}
    else:  # the architecture is the checkpoint's (the Cityscapes labels passed by load_pretrained_network)
        model = {"model_class": SegformerForSemanticSegmentation}
    with _held_load_report() as held:
        network, info = load_pretrained_network(repo, ignore_mismatched_sizes=True, output_loading_info=True, progress=False, **model)
    line = f"{name}: encoder from {repo} (ImageNet), new {NUM_CLASSES}-class {'DAFormer' if daformer else 'SegFormer'} head"
    missing = sorted(key for key in info["missing_keys"] if not key.startswith(NEW_HEAD_PREFIX))
    unused = sorted(key for key in info["unexpected_keys"] if not key.startswith(IMAGENET_CLASSIFIER_PREFIX))
    reshaped = sorted(key for key, *_ in info["mismatched_keys"])
    if not (missing or unused or reshaped):
        logger.info(line)
        return network
    _emit(held)  # transformers' report, as it would have been shown
    problems = []
    if missing:
        problems.append(f"{_count(missing, 'encoder weight')} missing from {repo}, so random: {_some(missing)}")
    if unused:
        problems.append(f"{_count(unused, 'weight')} of {repo} not used (besides its classifier): {_some(unused)}")
    if reshaped:
        problems.append(f"{_count(reshaped, 'weight')} of {repo} with another shape, so random: {_some(reshaped)}")
    logger.warning("%s; but %s (transformers' load report above)", line, "; ".join(problems))
    return network


def load_dinov2_upernet(name: str, repo: str | None = None) -> PreTrainedModel:
    """A DINOv2 UperNet preset (`dinov2-small-upernet`, ...) with its backbone from `facebook/dinov2-*` (or `repo`, a
    folder or Hub id of the same size) and a new 19-class UperNet head, said in one line (logged at INFO).

    transformers' load report is shown only when a backbone weight is missing, has another shape, or is not used
    (besides the mask token of DINOv2's masked-image pretraining, which segmentation never uses)."""
    repo = repo or dinov2_repo(name)
    config = preset_config(name)
    with _held_load_report() as held:
        backbone, info = load_pretrained_network(
            repo, model_class=Dinov2Backbone, config=config.backbone_config, output_loading_info=True, progress=False
        )
    network = AutoModelForSemanticSegmentation.from_config(config)
    network.backbone.load_state_dict(backbone.state_dict())
    line = f"{name}: backbone from {repo} (DINOv2), new {NUM_CLASSES}-class UperNet head"
    unused = sorted(key for key in info["unexpected_keys"] if "mask_token" not in key)
    problems = [*info["missing_keys"], *unused, *(key for key, *_ in info["mismatched_keys"])]
    if not problems:
        logger.info(line)
        return network
    _emit(held)
    logger.warning("%s; but %s of %s differ (transformers' load report above): %s", line, _count(problems, "weight"), repo, _some(problems))
    return network


def with_hrda(
    network: PreTrainedModel, *, context_scale: float, detail_crop: tuple[int, int], attention_classwise: bool = True
) -> DaformerForSemanticSegmentation:
    """A DAFormer-head network made an HRDA network (`hrda_scales` [context_scale, 1]) with a new scale attention at
    the DAFormer head's width (HRDA's `attention_embed_dim` 256), initialised as the head; an imported HRDA network
    keeps its own. `detail_crop` (height, width) is the detail crop of its inference windows."""
    if not isinstance(network, DaformerForSemanticSegmentation):
        raise ValueError(  # noqa: TRY004 (a flag's error, as the others: one line, exit status 2)
            f"--hrda needs an auxiliary student with the DAFormer head (mit-b5-daformer, tiny-wide-daformer, an imported "
            f"DAFormer or HRDA checkpoint): HRDA's scale attention is a DAFormer head; got a {type(network).__name__}"
        )
    config = network.config
    if config.hrda_scales and min(config.hrda_scales) != context_scale:
        raise ValueError(
            f"the auxiliary student is an HRDA network with context scale {min(config.hrda_scales)}; pass "
            f"--hrda_context_scale {min(config.hrda_scales)}"
        )
    config.hrda_detail_crop = list(detail_crop)
    if not config.hrda_scales:
        config.hrda_scales = [context_scale, 1.0]
        config.hrda_attention_classwise = attention_classwise
        config.hrda_attention_width = config.decoder_hidden_size
        network.scale_attention = DaformerDecodeHead(config, scale_attention=True)
        network.scale_attention.apply(network._init_weights)
    return network


def without_unused_parameters(network: PreTrainedModel) -> PreTrainedModel:
    """The network without the parameters a segmentation forward pass without labels never uses, which would get no
    gradient (and make DDP wait for one): UperNet's auxiliary FCN head (its loss needs labels; removed, and the config
    says so) and a ViT backbone's mask token (masked-image pretraining; frozen)."""
    if getattr(network, "auxiliary_head", None) is not None:
        network.auxiliary_head = None
        network.config.use_auxiliary_head = False
    for name, param in network.named_parameters():
        if name.endswith("embeddings.mask_token"):
            param.requires_grad_(False)
    return network


def load_image_processor(name_or_path: str) -> BaseImageProcessor | None:
    """The image processor a folder or (cached) Hub repo ships, as its PIL class (no torchvision), or None when it has none."""
    try:
        return AutoImageProcessor.from_pretrained(name_or_path, backend="pil")
    except (OSError, ValueError):  # no preprocessor_config.json, or one naming no known processor
        return None


def adopt_input_normalization(network: PreTrainedModel, name_or_path: str) -> PreTrainedModel:
    """Keep the input normalisation of a loaded network's own image processor in its config (see
    `INPUT_NORMALIZATION_KEY`); a SegFormer or DAFormer-head network without one keeps ImageNet's; any other family
    must have one."""
    processor = load_image_processor(name_or_path)
    if processor is None:
        if network.config.model_type in ("segformer", "daformer"):  # MiT encoders: ImageNet's statistics
            return network
        raise ModelUnavailableError(
            f"'{name_or_path}' ({network.config.model_type}) has no image processor (preprocessor_config.json), so "
            "the normalisation its weights expect is unknown. Add the preprocessor_config.json of the model it came "
            "from to the folder (or pass a preset name to train from scratch)."
        )
    normalize = bool(getattr(processor, "do_normalize", False))  # MobileViT's processors do not normalise
    mean = tuple(processor.image_mean or IMAGENET_MEAN) if normalize else (0.0, 0.0, 0.0)
    std = tuple(processor.image_std or IMAGENET_STD) if normalize else (1.0, 1.0, 1.0)
    bgr = bool(getattr(processor, "do_flip_channel_order", False))
    if (mean, std, bgr) != (IMAGENET_MEAN, IMAGENET_STD, False):
        setattr(network.config, INPUT_NORMALIZATION_KEY, {"mean": list(mean), "std": list(std), "bgr": bgr})
    return network


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
    frozen = configs.pop(FROZEN_SOURCES_KEY, {})
    if role not in configs:
        raise ModelUnavailableError(f"checkpoint '{folder}' has no network '{role}'; it holds {sorted(configs)}")
    config = configs[role]
    prefix = role_prefix(role)
    state = {key[len(prefix) :]: value for key, value in load_file(weights_path).items() if key.startswith(prefix)}
    if not state and role in frozen:  # a frozen teacher the checkpoint left out: built from its source, checked
        network = build_network(frozen[role]["source"])
        check_frozen_networks(str(folder), {role: frozen[role]}, {role: frozen_record(network, frozen[role]["source"])})
        return network
    network = AutoModelForSemanticSegmentation.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    network.load_state_dict(state, strict=True)
    return network


def build_network(name: str, init: str = "imagenet") -> PreTrainedModel:
    """A 19-class segmentation network by preset name (`mit-b0`..`mit-b5`, `tiny`, `tiny-wide`, each also with the
    DAFormer head as `NAME-daformer`, `mobilenetv2-deeplabv3-tiny`, `mobilevitv2-tiny`, UperNet on DINOv2 as
    `dinov2-small-upernet`, `dinov2-base-upernet`, `dinov2-large-upernet`, `dinov2-upernet-tiny`), Hub id or local folder of any
    `AutoModelForSemanticSegmentation` family, or one network of a DudaTrainer checkpoint as `CHECKPOINT_DIR@role`
    (`student`, `aux_student`, `teacher`).

    A loaded network with another number of classes gets a new 19-class head (the rest of its weights kept); one
    that is not a SegFormer must come with its image processor, whose normalisation it is then trained with.

    Args:
        name: preset, Hub id or folder.
        init: for `mit-bN` and `mit-bN-daformer`: 'imagenet' loads the encoder from `nvidia/mit-bN` (decode head
            new), for `dinov2-*-upernet` the backbone from `facebook/dinov2-*`; 'random' builds the architecture from
            scratch. The small presets are always random.
    """
    encoder = mit_encoder(name)
    if name in DINOV2_PRESETS and dinov2_repo(name) and init == "imagenet":
        return load_dinov2_upernet(name)
    if random_only(name) or (encoder and init == "random") or name in OTHER_FAMILY_PRESETS or name in DINOV2_PRESETS:
        return without_unused_parameters(AutoModelForSemanticSegmentation.from_config(preset_config(name)))
    if encoder:
        return load_imagenet_encoder(name)
    path, _, role = name.rpartition("@")
    if path and Path(path).is_dir():
        return without_unused_parameters(load_from_checkpoint(path, role))
    # A head for another label set (e.g. 21 VOC classes) is replaced by a new 19-class one.
    network = load_pretrained_network(name, ignore_mismatched_sizes=True)
    return without_unused_parameters(_check_labels(adopt_input_normalization(network, name), name))
