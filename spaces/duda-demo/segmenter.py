"""The demo Space's model side, without Gradio: load a segmentation model, check it, run it on an image.

A Space installs requirements.txt, not duda_hf: this module needs only torch, transformers (with huggingface_hub
and safetensors), pillow and numpy, and onnxruntime for an ONNX student. The uploads it is given and the class map
it returns are read and measured in images.py beside it; the page is app.py.

Environment:
    DUDA_RUNTIME  `auto` (default): ONNX Runtime when the model has `onnx/model.onnx` (duda-export-onnx) and
                  onnxruntime is installed, else PyTorch; `onnx`: ONNX Runtime or a load error; `onnx-int8`: the
                  quantized `onnx/model_quantized.onnx`; `pytorch`: always PyTorch.
    DUDA_TRUST_REMOTE_CODE  `1` to run the code a model carries (`auto_map`: a DAFormer-head network, from a
                  DUDA run or `duda-import-checkpoint`, is not a transformers class and brings modeling_daformer.py);
                  off by default, as in transformers: set it only for models whose code you trust.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import is_offline_mode
from PIL import Image
from safetensors import SafetensorError, safe_open
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, PreTrainedModel, SegformerImageProcessorPil
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import cached_file

DEFAULT_MODEL = "org/duda-mitb0-gta2cs"

# Cityscapes trainIds 0..18 and their palette (copied from duda_hf.data.labels: the Space must not import duda_hf).
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message says why and how to fix it."""


@dataclass(frozen=True)
class ModelInfo:
    """What the page says about a model, all read from the model's own files (an absent part is left out)."""

    architecture: str  # the config's class, e.g. SegformerForSemanticSegmentation
    summary: str | None = None  # the model card's first paragraph (what the model is and how it was trained)
    result: str | None = None  # the card's reported result (model-index), e.g. "mIoU 34.62 on Cityscapes (validation)"
    plots: tuple[tuple[str, str], ...] = ()  # (local file, caption) of the pictures the card shows from the repo
    card: str = "none"  # "read"; "none": the model has no card; "unavailable": not in the cache and the Hub not asked


@dataclass
class Segmenter:
    """A segmentation model, the image processor it was exported with, and the runtime that answers."""

    source: str  # Hub id or folder it was loaded from
    model: PreTrainedModel
    processor: BaseImageProcessor  # from preprocessor_config.json: size, rescale, mean and std, channel order
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    session: object | None = None  # an onnxruntime.InferenceSession; None: PyTorch
    runtime: str = "PyTorch"  # shown with every answer
    info: ModelInfo | None = None  # from its card and config, for the page

    @property
    def input_size_hw(self) -> tuple[int, int]:
        """(height, width) the image is resized to."""
        return int(self.processor.size.height), int(self.processor.size.width)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> normalised `(1, 3, H, W)` float tensor at the model's input size, by the model's processor.

        Always the whole image resized (never cropped or padded): the class map is interpolated back onto it.
        """
        return self.processor(image, do_resize=True, do_center_crop=False, do_pad=False, return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def predict(self, image: Image.Image) -> tuple[np.ndarray, float]:
        """Class map `(H, W)` uint8 at `image`'s size, and the seconds spent (resize, forward, upsampling, argmax)."""
        start = time.perf_counter()
        pixels = self.pixel_values(image)
        if self.session is not None:
            logits = torch.from_numpy(self.session.run(["logits"], {"pixel_values": pixels.numpy()})[0])
        else:
            logits = self._logits(pixels)  # (1, C, H/s, W/s) at the model's output stride
        logits = torch.nn.functional.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)
        label_map = logits.argmax(dim=1)[0].to(torch.uint8).numpy()
        return label_map, time.perf_counter() - start

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The model's logits; a ViT backbone's (UperNet on DINOv2) on the input padded with zeros (the mean colour) to
        whole patches and cropped back, as duda-hf trains and evaluates it (`duda_hf.networks.inputs.run_network`)."""
        backbone = getattr(self.model.config, "backbone_config", None)
        multiple = int(getattr(backbone, "patch_size", None) or 1)
        height, width = pixels.shape[-2:]
        pad_h, pad_w = -height % multiple, -width % multiple
        if not (pad_h or pad_w):
            return self.model(pixel_values=pixels).logits
        logits = self.model(pixel_values=torch.nn.functional.pad(pixels, (0, pad_w, 0, pad_h))).logits
        return logits[..., : round(height * logits.shape[-2] / (height + pad_h)), : round(width * logits.shape[-1] / (width + pad_w))]


def _hub_reachable(timeout: float = 1.5) -> bool:
    """A quick connection probe: without network, from_pretrained would spend ~30 s in retries before failing.

    The same probe as `duda_hf.data.remote.hub_reachable`, repeated because a Space installs requirements.txt,
    not duda_hf.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def _trust_remote_code() -> bool:
    return os.environ.get("DUDA_TRUST_REMOTE_CODE", "").strip().lower() in ("1", "true", "yes")


def _fix_hint(env_var: str) -> str:
    return (
        f"To fix it, set {env_var} to a local folder holding config.json, model.safetensors and preprocessor_config.json "
        f"(for example the student/ folder of a training run) or to a Hub model id you can download, and restart: "
        f"{env_var}=path/to/student python spaces/duda-demo/app.py"
    )


def _image_processor(source: str, local_only: bool) -> BaseImageProcessor:
    """The model's image processor (PIL backend: no torchvision); SegFormer's defaults when it has no preprocessor_config.json."""
    try:
        return AutoImageProcessor.from_pretrained(source, backend="pil", local_files_only=local_only)
    except OSError as err:
        if "Can't load image processor" not in str(err):  # transformers' words for "no preprocessor config"; else a real error
            raise
    return SegformerImageProcessorPil()  # 512x512, ImageNet mean and std


RUNTIMES = {"auto": "onnx/model.onnx", "onnx": "onnx/model.onnx", "onnx-int8": "onnx/model_quantized.onnx", "pytorch": None}


def _onnx_session(source: str, local_only: bool, env_var: str) -> tuple[object | None, str]:
    """The ONNX Runtime session DUDA_RUNTIME asks for (None: PyTorch) and the runtime's name for the page."""
    choice = os.environ.get("DUDA_RUNTIME", "auto").strip().lower() or "auto"
    if choice not in RUNTIMES:
        raise ModelLoadError(f"DUDA_RUNTIME={choice!r} is not one of {sorted(RUNTIMES)}; unset it or pick one, and restart.")
    if RUNTIMES[choice] is None:
        return None, "PyTorch"
    path = cached_file(source, RUNTIMES[choice], local_files_only=local_only, _raise_exceptions_for_missing_entries=False)
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    if path is None or onnxruntime is None:
        if choice == "auto":
            return None, "PyTorch"
        missing = (
            f"the model has no {RUNTIMES[choice]} (export it with duda-export-onnx)" if path is None else "onnxruntime is not installed"
        )
        raise ModelLoadError(f"DUDA_RUNTIME={choice} but {missing}. {_fix_hint(env_var)}")
    options = onnxruntime.SessionOptions()
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session, f"ONNX Runtime {onnxruntime.__version__} ({RUNTIMES[choice]})"


SUMMARY_CHARS = 900  # a card's first paragraph longer than this is cut at a sentence
MAX_PLOTS = 4
IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def _card_summary(text: str) -> str | None:
    """The first paragraph of a card's text that is prose (not a heading, a table, code, a list or a picture)."""
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if block and not block.startswith(("#", "|", "```", "- ", "* ", "1. ", "!", "<", ">", "---")):
            paragraph = " ".join(line.strip() for line in block.splitlines())
            if len(paragraph) > SUMMARY_CHARS:
                cut = paragraph.rfind(". ", 0, SUMMARY_CHARS)
                paragraph = paragraph[: cut + 1 if cut > 0 else SUMMARY_CHARS] + " …"
            return paragraph
    return None


def _model_info(source: str, model: PreTrainedModel, local_only: bool) -> ModelInfo:
    """The model's card (README.md) read for the page: its first paragraph, its reported result and the pictures it
    shows from its own repo or folder. A model without a card is described by its config alone."""
    from huggingface_hub import ModelCard

    architecture = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    # the card of the very revision the weights came from (a repo pushed again since holds another run's card)
    revision = getattr(model.config, "_commit_hash", None) if not Path(source).is_dir() else None
    try:
        path = cached_file(source, "README.md", revision=revision, local_files_only=local_only, _raise_exceptions_for_missing_entries=False)
        card = ModelCard(Path(path).read_text(encoding="utf-8"), ignore_metadata_errors=True) if path else None
    except Exception:  # a card that cannot be read or parsed is no reason to refuse the model
        path = card = None
    if card is None:
        unavailable = path is None and local_only and not Path(source).is_dir()  # the Hub was not asked
        return ModelInfo(architecture, card="unavailable" if unavailable else "none")
    result = None
    for entry in card.data.eval_results or []:
        if entry.metric_value is not None:
            split = f" ({entry.dataset_split})" if entry.dataset_split else ""
            result = f"{entry.metric_name or entry.metric_type} {entry.metric_value} on {entry.dataset_name}{split}"
            break
    plots = []
    for caption, link in IMAGE_LINK.findall(card.text):
        if len(plots) == MAX_PLOTS or "://" in link or link.startswith("/"):
            continue  # only the repo's own files, not pictures from elsewhere
        try:
            local = cached_file(source, link, revision=revision, local_files_only=local_only, _raise_exceptions_for_missing_entries=False)
        except Exception:
            local = None
        if local:
            plots.append((local, caption))
    return ModelInfo(architecture, _card_summary(card.text), result, tuple(plots), card="read")


def _folder_problem(folder: Path) -> str | None:
    """What makes a local model folder unloadable, said plainly; None when its files look complete.

    Checked before transformers reads it: without config.json, transformers builds a default SegFormer and fails
    with a long weight report that never names the file; a truncated model.safetensors fails inside safetensors.
    """
    config = folder / "config.json"
    if not config.is_file():
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        return f"it has no config.json (it holds {present}); copy the whole exported folder"
    try:
        json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        return f"its config.json is not valid JSON ({err}); copy it again from the exported folder"
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return "it has no model.safetensors; copy the whole exported folder"
    try:  # safetensors checks the header and that the data it declares fills the file exactly
        with safe_open(str(weights), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        return f"its model.safetensors is truncated or damaged ({weights.stat().st_size:,} bytes on disk; {err}); copy it again"
    return None


def load_segmenter(source: str, env_var: str = "DUDA_MODEL") -> Segmenter:
    """Load a SegFormer from a Hub id or local folder: the local cache first, the Hub only when online.

    Raises:
        ModelLoadError: with the reason and the fix (which `env_var` to set).
    """
    is_folder = Path(source).expanduser().is_dir()
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source  # Hub ids are name or org/name
    if not is_folder and looks_like_path:
        raise ModelLoadError(f"Could not load the model '{source}': there is no such folder. {_fix_hint(env_var)}")
    source = str(Path(source).expanduser()) if is_folder else source
    if is_folder:
        problem = _folder_problem(Path(source))
        if problem:
            raise ModelLoadError(f"Could not load the model '{source}' from the folder: {problem}. {_fix_hint(env_var)}")
    # the cached copy first; the Hub only when online and reachable (fails within seconds without network)
    attempts = [True] if is_folder or is_offline_mode() else [True, False]
    error: Exception | None = None
    model = processor = None
    for local_only in attempts:
        if not local_only and not _hub_reachable():
            error = ConnectionError("the Hub is unreachable (no network)")
            continue
        try:
            model = AutoModelForSemanticSegmentation.from_pretrained(
                source, local_files_only=local_only, trust_remote_code=_trust_remote_code()
            ).eval()
            processor = _image_processor(source, local_only)
            break
        except Exception as err:  # a missing repo or file (OSError), damaged weights (SafetensorError), a bad config ...
            model, error = None, err
    if model is None:
        offline = "the local cache (HF_HUB_OFFLINE is set)" if is_offline_mode() else "the Hub or the local cache"
        where = "the folder" if is_folder else offline
        reason = str(error).strip().splitlines()[0].rstrip(".") if error is not None and str(error).strip() else type(error).__name__
        if "trust_remote_code" in str(error) and not _trust_remote_code():
            reason = (
                "it carries its own modeling code (a DAFormer-head network is not a transformers class), which runs only "
                "with DUDA_TRUST_REMOTE_CODE=1: set it if you trust the model's code"
            )
        raise ModelLoadError(f"Could not load the model '{source}' from {where}: {reason}. {_fix_hint(env_var)}")

    id2label = {int(k): v for k, v in model.config.id2label.items()}
    names = tuple(id2label.get(i, f"class {i}") for i in range(model.config.num_labels))
    if len(names) > 256:
        raise ModelLoadError(f"The model '{source}' has {len(names)} classes; this demo shows at most 256. {_fix_hint(env_var)}")
    colours = dict(zip(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE))
    rng = np.random.default_rng(0)  # fixed colours for classes outside the Cityscapes palette
    palette = tuple(colours.get(name) or tuple(int(c) for c in rng.integers(0, 256, 3)) for name in names)
    size = processor.size
    if size is None or size.height is None or size.width is None:
        needed = "{'height': H, 'width': W}"
        given = {key: value for key, value in vars(size).items() if value is not None} if size is not None else None
        raise ModelLoadError(f"The model '{source}' has preprocessor size {given}; this demo needs {needed}. {_fix_hint(env_var)}")
    session, runtime = _onnx_session(source, local_only, env_var)
    # the card and its pictures: from where the model came, or the Hub when it is reachable (a model loaded from the
    # cache has no card there yet)
    online = not local_only or (not is_folder and not is_offline_mode() and _hub_reachable())
    info = _model_info(source, model, local_only=not online)
    segmenter = Segmenter(source, model, processor, names, palette, session=session, runtime=runtime, info=info)
    try:  # warm-up: the first forward pass is the slowest, better paid at start-up than by the first visitor
        height, width = segmenter.input_size_hw
        segmenter.predict(Image.new("RGB", (width, height)))  # PIL takes (W, H)
    except Exception as err:
        raise ModelLoadError(f"The model '{source}' loaded but could not run ({type(err).__name__}: {err}). {_fix_hint(env_var)}") from err
    return segmenter
