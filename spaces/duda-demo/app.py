"""DUDA demo Space: drop a street image, get its Cityscapes segmentation from a distilled SegFormer student.

Runs on a free CPU Space and on a laptop: `python spaces/duda-demo/app.py`. It needs only torch, transformers,
gradio, pillow and numpy, and onnxruntime for an ONNX student (a Space installs requirements.txt, not duda_hf).
This file is the page; segmenter.py beside it loads and runs the model, images.py reads the uploads and measures
the class map (no Gradio in either).

Environment:
    DUDA_MODEL    Hub id or local folder of the student (default org/duda-mitb0-gta2cs); any transformers semantic
                  segmentation model (SegFormer, MobileNetV2-DeepLabV3, MobileViT, ...).
    DUDA_TEACHER  optional Hub id or folder of the teacher, shown beside the student.
    DUDA_RUNTIME  PyTorch or ONNX Runtime (see segmenter.py).
"""

from __future__ import annotations

import os
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from gradio import processing_utils
from gradio.components.annotated_image import AnnotatedImageData, Annotation
from gradio.data_classes import FileData
from images import (  # the images in and out, beside this file
    MAX_PIXELS,
    MAX_SIDE,
    InputError,
    class_shares,
    downscale_to_cap,
    read_image,
    resize_nearest,
    too_large_message,
)
from PIL import Image
from segmenter import (  # the model side, beside this file
    CITYSCAPES_CLASSES,
    DEFAULT_MODEL,
    ModelLoadError,
    Segmenter,
    load_segmenter,
)

# Measured with benchmarks/space_load.py (MiT-B0 at 1024x512, 2 CPU cores, 20 visitors at once): 2.07 s per request
# one at a time, 1.92 s two at a time (within noise) for 41% more memory (757 vs 1064 MiB above idle), and the first
# answer later (4.4 vs 6.7 s). So one image at a time: inference already uses every core. 16 waiting requests keep
# the last accepted visitor's wait near 17 x 2.1 = 36 s; beyond that Gradio answers "Queue is full".
QUEUE_CONCURRENCY = 1
QUEUE_MAX_SIZE = 16
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


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
            raise gr.Error(too_large_message(None, None), print_exception=False) from None
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


def _describe(segmenter: Segmenter, role: str) -> str:
    """One model as its own files describe it: source, size and runtime, then its card's summary and reported result;
    a model without a card is described by its config alone."""
    info = segmenter.info
    line = (
        f"**{role}:** `{segmenter.source}`, a {info.architecture} with {len(segmenter.class_names)} classes "
        f"({segmenter.num_parameters / 1e6:.2f} M parameters, runs on {segmenter.runtime})."
    )
    if info.result:
        line += f" Its card reports {info.result}."
    if info.summary:
        line += f"\n\n> {info.summary}"
    elif role == "Model" and info.card == "none":
        line += " It has no model card, so nothing more is known about how it was trained."
    elif role == "Model" and info.card == "unavailable":
        line += " Its model card is not in the local cache and the Hub was not reachable, so it is not described here."
    return line


def _intro(student: Segmenter | None, student_source: str, teacher: Segmenter | None) -> str:
    height, width = student.input_size_hw if student else (512, 1024)
    lines = [
        "# DUDA demo: semantic segmentation",
        "Drop an image (or pick an example) and press **Segment**: the model labels every pixel with one of its classes.",
        _describe(student, "Model") if student else f"**Model:** `{student_source}` (not loaded).",
    ]
    if teacher:
        lines.append(_describe(teacher, "Teacher"))
    lines.append(
        f"The model sees the image resized to {width}x{height}. Images larger than {MAX_SIDE} px on their longest side are "
        f"downscaled to {MAX_SIDE} px for inference and the overlay is shown at the original size; "
        f"uploads above {MAX_PIXELS / 1e6:.0f} megapixels are refused."
    )
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
        if student is not None and student.info.plots:  # the pictures the model's card shows: how its training went
            with gr.Accordion("How the model was trained (from its model card)", open=False, elem_id="training-plots"), gr.Row():
                for path, caption in student.info.plots:
                    gr.Image(value=path, label=caption, interactive=False, buttons=[], elem_classes=["training-plot"])
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
