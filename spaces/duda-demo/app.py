"""DUDA demo Space: drop a street image, get its Cityscapes segmentation from a distilled SegFormer student.

Runs on a free CPU Space and on a laptop: `python spaces/duda-demo/app.py`. It needs only torch, transformers,
gradio, pillow and numpy, and onnxruntime for an ONNX student (a Space installs requirements.txt, not duda_hf).

Environment:
    DUDA_MODEL    Hub id or local folder of the student (default org/duda-mitb0-gta2cs); any transformers semantic
                  segmentation model (SegFormer, MobileNetV2-DeepLabV3, MobileViT, ...).
    DUDA_TEACHER  optional Hub id or folder of the teacher, shown beside the student.
    DUDA_RUNTIME  `auto` (default): ONNX Runtime when the model has `onnx/model.onnx` (duda-export-onnx) and
                  onnxruntime is installed, else PyTorch; `onnx`: ONNX Runtime or a load error; `onnx-int8`: the
                  quantized `onnx/model_quantized.onnx`; `pytorch`: always PyTorch.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from gradio import processing_utils
from gradio.components.annotated_image import AnnotatedImageData, Annotation
from gradio.data_classes import FileData
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import AutoModelForSemanticSegmentation, PreTrainedModel
from transformers.utils import cached_file

DEFAULT_MODEL = "org/duda-mitb0-gta2cs"
MAX_SIDE = 2048  # longest side the model output is computed at; larger images are downscaled, the overlay is not
MAX_PIXELS = 50_000_000  # larger uploads are refused: a free CPU Space has 16 GB and the overlay keeps the original size
# Measured with benchmarks/space_load.py (MiT-B0 at 1024x512, 2 CPU cores, 20 visitors at once): 2.07 s per request
# one at a time, 1.92 s two at a time (within noise) for 41% more memory (757 vs 1064 MiB above idle), and the first
# answer later (4.4 vs 6.7 s). So one image at a time: inference already uses every core. 16 waiting requests keep
# the last accepted visitor's wait near 17 x 2.1 = 36 s; beyond that Gradio answers "Queue is full".
QUEUE_CONCURRENCY = 1
QUEUE_MAX_SIZE = 16
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

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
# What SegformerImageProcessor does when preprocessor_config.json leaves a field out.
PROCESSOR_DEFAULTS = {"size": {"height": 512, "width": 512}, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}

NO_IMAGE = "No image: upload a street photo (PNG, JPEG, WebP, ...) or click one of the examples, then press Segment."


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message says why and how to fix it."""


class InputError(ValueError):
    """An upload the demo cannot segment; the message is shown to the user as is."""


# ---------------------------------------------------------------------------------------------------------------------
# Model


@dataclass
class Segmenter:
    """A segmentation model, the preprocessing it was exported with, and the runtime that answers."""

    source: str  # Hub id or folder it was loaded from
    model: PreTrainedModel
    input_size_hw: tuple[int, int]  # (height, width) the image is resized to, from preprocessor_config.json
    mean: np.ndarray  # (3,) in [0, 1]
    std: np.ndarray  # (3,)
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    bgr: bool = False  # channels flipped after normalisation (MobileViT's processor)
    session: object | None = None  # an onnxruntime.InferenceSession; None: PyTorch
    runtime: str = "PyTorch"  # shown with every answer

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> normalised `(1, 3, H, W)` float tensor at the model's input size (bilinear, as the processor)."""
        height, width = self.input_size_hw
        array = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0
        array = (array - self.mean) / self.std
        if self.bgr:
            array = array[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0)

    @torch.inference_mode()
    def predict(self, image: Image.Image) -> tuple[np.ndarray, float]:
        """Class map `(H, W)` uint8 at `image`'s size, and the seconds spent (resize, forward, upsampling, argmax)."""
        start = time.perf_counter()
        pixels = self.pixel_values(image)
        if self.session is not None:
            logits = torch.from_numpy(self.session.run(["logits"], {"pixel_values": pixels.numpy()})[0])
        else:
            logits = self.model(pixel_values=pixels).logits  # (1, C, H/s, W/s) at the model's output stride
        logits = torch.nn.functional.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)
        label_map = logits.argmax(dim=1)[0].to(torch.uint8).numpy()
        return label_map, time.perf_counter() - start


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 1.5) -> bool:
    """A quick connection probe: without network, from_pretrained would spend ~30 s in retries before failing.

    The same probe as `duda_hf.models._hub_reachable`, repeated because a Space installs requirements.txt, not duda_hf.
    """
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def _fix_hint(env_var: str) -> str:
    return (
        f"To fix it, set {env_var} to a local folder holding config.json, model.safetensors and preprocessor_config.json "
        f"(for example the student/ folder of a training run) or to a Hub model id you can download, and restart: "
        f"{env_var}=path/to/student python spaces/duda-demo/app.py"
    )


def _read_processor_config(source: str, local_only: bool) -> dict:
    path = cached_file(source, "preprocessor_config.json", local_files_only=local_only, _raise_exceptions_for_missing_entries=False)
    config = dict(PROCESSOR_DEFAULTS)
    if path is not None:
        config.update(json.loads(Path(path).read_text()))
    return config


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
    expected = _safetensors_size(weights)
    if expected != weights.stat().st_size:
        return (
            f"its model.safetensors is truncated or damaged ({weights.stat().st_size:,} bytes on disk, "
            f"{f'{expected:,} expected' if expected else 'no readable header'}); copy it again"
        )
    return None


def _safetensors_size(path: Path) -> int | None:
    """The size a safetensors file declares in its header (8-byte length, JSON, then the data), or None if unreadable."""
    with open(path, "rb") as file:
        length = int.from_bytes(file.read(8), "little")
        try:
            header = json.loads(file.read(length)) if 0 < length < 100_000_000 else None
        except (ValueError, UnicodeDecodeError):
            header = None
    if not isinstance(header, dict):
        return None
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__" and isinstance(entry, dict)]
    return 8 + length + max(ends, default=0)


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
    attempts = [True] if is_folder or _offline() else [True, False]
    error: Exception | None = None
    model = processor = None
    for local_only in attempts:
        if not local_only and not _hub_reachable():
            error = ConnectionError("the Hub is unreachable (no network)")
            continue
        try:
            model = AutoModelForSemanticSegmentation.from_pretrained(source, local_files_only=local_only).eval()
            processor = _read_processor_config(source, local_only)
            break
        except Exception as err:  # a missing repo or file (OSError), damaged weights (SafetensorError), a bad config ...
            error = err
    if model is None:
        where = "the folder" if is_folder else ("the local cache (HF_HUB_OFFLINE is set)" if _offline() else "the Hub or the local cache")
        reason = str(error).strip().splitlines()[0].rstrip(".") if error is not None and str(error).strip() else type(error).__name__
        raise ModelLoadError(f"Could not load the model '{source}' from {where}: {reason}. {_fix_hint(env_var)}")

    id2label = {int(k): v for k, v in model.config.id2label.items()}
    names = tuple(id2label.get(i, f"class {i}") for i in range(model.config.num_labels))
    if len(names) > 256:
        raise ModelLoadError(f"The model '{source}' has {len(names)} classes; this demo shows at most 256. {_fix_hint(env_var)}")
    colours = dict(zip(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE))
    rng = np.random.default_rng(0)  # fixed colours for classes outside the Cityscapes palette
    palette = tuple(colours.get(name) or tuple(int(c) for c in rng.integers(0, 256, 3)) for name in names)
    size = processor["size"]
    if not (isinstance(size, dict) and {"height", "width"} <= set(size)):
        needed = "{'height': H, 'width': W}"
        raise ModelLoadError(f"The model '{source}' has preprocessor size {size}; this demo needs {needed}. {_fix_hint(env_var)}")
    normalize = processor.get("do_normalize", True)
    session, runtime = _onnx_session(source, local_only, env_var)
    segmenter = Segmenter(
        source=source,
        model=model,
        input_size_hw=(int(size["height"]), int(size["width"])),
        mean=np.asarray(processor["image_mean"] if normalize else (0.0, 0.0, 0.0), np.float32),
        std=np.asarray(processor["image_std"] if normalize else (1.0, 1.0, 1.0), np.float32),
        class_names=names,
        palette=palette,
        bgr=bool(processor.get("do_flip_channel_order", False)),
        session=session,
        runtime=runtime,
    )
    try:  # warm-up: the first forward pass is the slowest, better paid at start-up than by the first visitor
        height, width = segmenter.input_size_hw
        segmenter.predict(Image.new("RGB", (width, height)))  # PIL takes (W, H)
    except Exception as err:
        raise ModelLoadError(f"The model '{source}' loaded but could not run ({type(err).__name__}: {err}). {_fix_hint(env_var)}") from err
    return segmenter


# ---------------------------------------------------------------------------------------------------------------------
# Input


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency over white, 16-bit and float greys scaled to 8 bits."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = np.asarray(image, dtype=np.float64)
        if grey.max(initial=0) > 255:  # 16-bit range
            grey = grey * (255.0 / 65535.0)
        elif image.mode == "F" and grey.max(initial=0) <= 1.0:  # float range [0, 1]
            grey = grey * 255.0
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: str | os.PathLike | None) -> Image.Image:
    """Open an upload as an upright RGB image (EXIF orientation applied).

    Raises:
        InputError: no file, not an image, a damaged image, or more than MAX_PIXELS pixels.
    """
    if path is None or str(path).strip() == "":
        raise InputError(NO_IMAGE)
    name = Path(path).name
    try:
        with Image.open(path) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise InputError(_too_large(opened.width, opened.height))
            try:
                image = ImageOps.exif_transpose(opened)
            except Exception:  # a broken EXIF block should not lose the picture: keep it unrotated
                image = opened.copy()
            image.load()
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(_too_large(None, None)) from None
    except (UnidentifiedImageError, FileNotFoundError, IsADirectoryError):
        raise InputError(f"'{name}' is not an image this demo can read. Upload a PNG, JPEG, WebP, BMP or TIFF file.") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise InputError(f"'{name}' looks like an image but could not be decoded ({err}). Try re-saving it as PNG or JPEG.") from None
    try:
        return _to_rgb(image)
    except (OSError, ValueError) as err:
        raise InputError(f"'{name}' uses the colour mode {image.mode}, which cannot be converted to RGB ({err}).") from None


def _too_large(width: int | None, height: int | None) -> str:
    size = f" ({width}x{height} = {width * height / 1e6:.0f} megapixels)" if width else ""
    return f"The image is too large{size}: this demo accepts up to {MAX_PIXELS / 1e6:.0f} megapixels. Downscale it and try again."


def downscale_to_cap(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """`image` with its longest side at most `max_side` (aspect ratio kept); small images are returned as they are."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)


def resize_nearest(label_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a class map `(h, w)` to `(height, width)`; classes are never blended."""
    rows = np.minimum((np.arange(height) + 0.5) * label_map.shape[0] / height, label_map.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(width) + 0.5) * label_map.shape[1] / width, label_map.shape[1] - 1).astype(np.intp)
    return label_map[rows[:, None], cols[None, :]]


def class_shares(label_map: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    """Share of pixels per class present in `label_map`, largest first (sums to 1)."""
    counts = np.bincount(label_map.ravel(), minlength=len(class_names))[: len(class_names)]
    order = np.argsort(-counts, kind="stable")
    return {class_names[i]: float(counts[i] / label_map.size) for i in order if counts[i] > 0}


# ---------------------------------------------------------------------------------------------------------------------
# Components


def save_image_to_cache(image: Image.Image, cache_dir: str, name: str, format: str) -> str:
    """Write `image` into Gradio's cache, in a folder named by the hash of its bytes, and return its path.

    Identical results (visitors segmenting the same example at once) map to the same file. Gradio's own
    `save_pil_to_cache` rewrites that file in place, so a response being served from it could lose bytes
    mid-stream and the connection was dropped ("Too little data for declared Content-Length"). Here the file is
    written once, under a temporary name renamed into place: a reader always sees a complete file.
    """
    data = processing_utils.encode_pil_to_bytes(image, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    path = folder / f"{name}.{format}"
    if not path.is_file():  # the same name always holds the same bytes: written once
        folder.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(staging, path)
    return str(path.resolve())


@dataclass
class Overlay:
    """What `ClassOverlay` shows: an image, its class map at the same size, and how opaque the colours are."""

    image: Image.Image
    label_map: np.ndarray  # (H, W) class ids, same size as image
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    opacity: float


class ClassOverlay(gr.AnnotatedImage):
    """gr.AnnotatedImage (same front end, legend and API format) fed with a class map.

    The stock postprocess builds one float64 RGBA array per class at full size; for a 12-megapixel photo and
    19 classes that is gigabytes and seconds. Here each class mask is a 2-colour palette PNG (1 bit per pixel,
    the opacity in its transparency table), so the original size stays affordable.
    """

    is_template = True  # use AnnotatedImage's front end

    def postprocess(self, value: Overlay | None) -> AnnotatedImageData | None:  # type: ignore[override]
        if value is None:
            return None
        if not isinstance(value, Overlay):
            return super().postprocess(value)
        base = save_image_to_cache(value.image, self.GRADIO_CACHE, "image", "jpeg")
        alpha = round(255 * min(max(value.opacity, 0.0), 1.0))
        annotations = []
        present = np.flatnonzero(np.bincount(value.label_map.ravel(), minlength=len(value.class_names)))
        for class_id in present:
            mask = Image.fromarray((value.label_map == class_id).view(np.uint8))
            mask.putpalette([0, 0, 0, *value.palette[class_id]])  # L -> P: index 1 is the class colour
            mask.info["transparency"] = bytes([0, alpha])
            path = save_image_to_cache(mask, self.GRADIO_CACHE, f"mask{class_id}", "png")
            annotations.append(Annotation(image=FileData(path=path), label=value.class_names[class_id]))
        return AnnotatedImageData(image=FileData(path=base), annotations=annotations)


class ImageUpload(gr.Image):
    """gr.Image whose upload errors reach the user as a message instead of a generic failure."""

    is_template = True  # use Image's front end

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Image.DecompressionBombError:
            raise gr.Error(_too_large(None, None), print_exception=False) from None
        except Exception:
            name = Path(getattr(payload, "orig_name", None) or getattr(payload, "path", None) or "the upload").name
            message = f"'{name}' is not an image this demo can read. Upload a PNG, JPEG, WebP, BMP or TIFF file."
            raise gr.Error(message, print_exception=False) from None


# ---------------------------------------------------------------------------------------------------------------------
# App


def _color_map(segmenter: Segmenter | None) -> dict[str, str] | None:
    """Class name -> '#rrggbb': the legend's colours, the same as the masks'."""
    if segmenter is None:
        return None
    return {name: "#{:02x}{:02x}{:02x}".format(*rgb) for name, rgb in zip(segmenter.class_names, segmenter.palette)}


def _intro(student: Segmenter | None, student_source: str, teacher: Segmenter | None) -> str:
    height, width = student.input_size_hw if student else (512, 1024)
    lines = [
        "# DUDA: distilled domain-adaptive segmentation",
        (
            "Drop a street image (or pick an example) and press **Segment**. The student is a lightweight SegFormer "
            "adapted from synthetic (GTA5) to real (Cityscapes) streets and distilled from a large teacher; it labels "
            "every pixel with one of the 19 Cityscapes classes."
        ),
        f"Model: `{student_source}`"
        + (f" ({student.num_parameters / 1e6:.1f} M parameters, runs on {student.runtime})" if student else "")
        + (f"; teacher `{teacher.source}` ({teacher.num_parameters / 1e6:.1f} M parameters)" if teacher else "")
        + ".",
        (
            f"The model sees the image resized to {width}x{height}. Images larger than {MAX_SIDE} px on their longest side are "
            f"downscaled to {MAX_SIDE} px for inference and the overlay is shown at the original size; "
            f"uploads above {MAX_PIXELS / 1e6:.0f} megapixels are refused."
        ),
    ]
    return "\n\n".join(lines)


def _timing(student_seconds: float, size_wh: tuple[int, int], work_wh: tuple[int, int], teacher_line: str, runtime: str = "PyTorch") -> str:
    """The timing line; sizes are PIL's (width, height), shown as width x height."""
    scaled = f", downscaled to {work_wh[0]}x{work_wh[1]} for inference" if work_wh != size_wh else ""
    return f"**Inference time:** {student_seconds:.2f} s (student, {runtime}) · image {size_wh[0]}x{size_wh[1]}{scaled}{teacher_line}"


def build_demo(model: str | None = None, teacher: str | None = None) -> gr.Blocks:
    """The Space's Blocks, queued. The models load once, here; a model that fails to load becomes a message on the page.

    Args:
        model: Hub id or folder of the student; None reads DUDA_MODEL (default org/duda-mitb0-gta2cs).
        teacher: Hub id or folder of the teacher to show beside the student; None reads DUDA_TEACHER (optional).
    """
    student_source = model or os.environ.get("DUDA_MODEL") or DEFAULT_MODEL
    teacher_source = teacher or os.environ.get("DUDA_TEACHER") or None
    problems: list[str] = []
    student = teacher_model = None
    try:
        student = load_segmenter(student_source, "DUDA_MODEL")
    except ModelLoadError as err:
        problems.append(str(err))
    if teacher_source:
        try:
            teacher_model = load_segmenter(teacher_source, "DUDA_TEACHER")
        except ModelLoadError as err:
            problems.append(f"The teacher is not shown. {err}")

    def overlays(state: dict, opacity: float):
        if student is None:
            return None, None
        image = state["image"]
        shown = Overlay(image, state["student"], student.class_names, student.palette, opacity)
        if teacher_model is None:
            return shown, None
        return shown, Overlay(image, state["teacher"], teacher_model.class_names, teacher_model.palette, opacity)

    def segment(image: str | None, opacity: float = 0.6):
        """Segment a street image: class overlay (with legend), share of pixels per class, timing."""
        if student is None:
            raise gr.Error(problems[0], duration=None, print_exception=False)
        try:
            original = read_image(image)
        except InputError as err:
            raise gr.Error(str(err), print_exception=False) from None
        try:
            work = downscale_to_cap(original)
            student_map, student_seconds = student.predict(work)
            state = {"image": original, "student": resize_nearest(student_map, original.height, original.width)}
            teacher_line = ""
            if teacher_model is not None:
                teacher_map, teacher_seconds = teacher_model.predict(work)
                state["teacher"] = resize_nearest(teacher_map, original.height, original.width)
                agreement = float(np.mean(student_map == teacher_map))
                teacher_line = f" · teacher {teacher_seconds:.2f} s · student agrees with the teacher on {agreement:.1%} of pixels"
            student_overlay, teacher_overlay = overlays(state, opacity)
            shares = class_shares(state["student"], student.class_names)
            timing = _timing(student_seconds, original.size, work.size, teacher_line, student.runtime)
        except Exception as err:  # never a traceback on the page: say what failed, keep the details in the log
            traceback.print_exc()
            raise gr.Error(f"Segmentation failed ({type(err).__name__}: {err}). Try another image.", print_exception=False) from None
        return student_overlay, teacher_overlay, shares, timing, state

    def recolor(opacity: float, state: dict | None):
        """Redraw the overlays at a new opacity without running the model again."""
        if not state:
            return None, None
        return overlays(state, opacity)

    with gr.Blocks(title="DUDA street segmentation") as demo:
        gr.Markdown(_intro(student, student_source, teacher_model))
        for problem in problems:
            gr.Markdown(f"**Model not loaded.** {problem}", elem_classes=["model-error"])
        with gr.Row():
            with gr.Column(scale=1):
                image = ImageUpload(
                    type="filepath", image_mode=None, label="Street image", sources=["upload", "clipboard"], elem_id="input-image"
                )  # image_mode=None: the file as uploaded (alpha, 16 bits, EXIF), converted by read_image
                opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Overlay opacity", elem_id="opacity")
                submit = gr.Button("Segment", variant="primary", elem_id="segment-button", interactive=student is not None)
                examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[image], label="Examples (procedurally generated streets)")
            with gr.Column(scale=2):
                with gr.Row():
                    student_out = ClassOverlay(label="Student", color_map=_color_map(student), elem_id="student-overlay")
                    teacher_out = ClassOverlay(
                        label="Teacher", color_map=_color_map(teacher_model), elem_id="teacher-overlay", visible=teacher_model is not None
                    )
                timing = gr.Markdown(elem_id="timing")
                shares = gr.Label(label="Share of pixels per class", num_top_classes=len(CITYSCAPES_CLASSES), elem_id="shares")
        state = gr.State(None)
        submit.click(segment, inputs=[image, opacity], outputs=[student_out, teacher_out, shares, timing, state], api_name="segment")
        opacity.change(
            recolor,
            inputs=[opacity, state],
            outputs=[student_out, teacher_out],
            api_visibility="private",
            trigger_mode="always_last",  # dragging the slider redraws once per pause, not once per step
            show_progress="hidden",
        )
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    return demo


def main() -> None:
    build_demo().launch()


if __name__ == "__main__":
    main()
