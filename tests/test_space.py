"""The Gradio Space (spaces/duda-demo): the /segment endpoint through gradio_client, every bad input, a real browser."""

import ast
import importlib
import importlib.util
import itertools
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from duda_hf.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")  # gradio's queue vs pandas 3

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "spaces" / "duda-demo"
REQUIRED = os.environ.get("DUDA_REQUIRE_SYSTEM_TESTS") == "1"  # CI: a missing browser or package fails, never skips
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _require(module: str, why: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if REQUIRED:
            pytest.fail(f"{module} is needed ({why}) and DUDA_REQUIRE_SYSTEM_TESTS=1: {err}", pytrace=False)
        pytest.skip(f"{module} not installed ({why}): pip install -e '.[dev]'", allow_module_level=True)


gr = _require("gradio", "the Space")
gradio_client = _require("gradio_client", "calling the Space's endpoint")


def load_space():
    """app.py imported from its path (the Space is not a package); registered so dataclasses resolve it.

    The Space's folder goes on sys.path, as when a Space runs `python app.py` there: app.py imports segmenter.py.
    """
    if str(SPACE) not in sys.path:
        sys.path.insert(0, str(SPACE))
    if "duda_space_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("duda_space_app", SPACE / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["duda_space_app"] = module
        spec.loader.exec_module(module)
    return sys.modules["duda_space_app"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Running:
    """A launched Space and a gradio_client connected to it."""

    def __init__(self, demo):
        self.demo = demo
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(), quiet=True)
        self.url = demo.local_url
        self.client = gradio_client.Client(self.url, verbose=False)

    def segment(self, path, opacity=0.6):
        upload = gradio_client.handle_file(str(path)) if path is not None else None
        return self.client.predict(upload, opacity, api_name="/segment")

    def close(self):
        self.demo.close()


def _export(folder: Path, name: str, eval_size_hw: tuple[int, int]) -> Path:
    from duda_hf.export.network import export_network
    from duda_hf.networks.loading import build_network

    if not (folder / "model.safetensors").is_file():
        export_network(build_network(name, "random"), folder, eval_size_hw=eval_size_hw)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("space") / "tiny", "tiny", (64, 128))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio_cache")))  # uploads and overlays, not /tmp/gradio
        yield load_space()


@pytest.fixture(scope="module")
def space(app, tiny_model):
    running = Running(app.build_demo(model=str(tiny_model)))
    yield running
    running.close()


def _size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def _check_overlay(result, size: tuple[int, int]) -> list[str]:
    """Assert the overlay, masks and shares agree with each other and with `size` (W, H); returns the class names."""
    overlay, _teacher, shares, timing = result
    assert _size(overlay["image"]) == size
    names = [a["label"] for a in overlay["annotations"]]
    assert names and set(names) <= set(CITYSCAPES_CLASSES)
    colours = dict(zip(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE))
    for annotation in overlay["annotations"]:
        with Image.open(annotation["image"]) as mask:
            assert mask.size == size and mask.mode == "P"
            assert tuple(mask.getpalette()[3:6]) == colours[annotation["label"]]  # index 1 = the class colour
    share_names = [c["label"] for c in shares["confidences"]]
    assert sorted(share_names) == sorted(names)
    assert sum(c["confidence"] for c in shares["confidences"]) == pytest.approx(1.0, abs=1e-4)
    assert re.search(r"Inference time:\*\* \d+\.\d\d s", timing)
    return names


# ---------------------------------------------------------------------------------------------------------------------
# Space files


def test_space_files_declare_a_gradio_space_that_needs_no_duda_hf():
    text = (SPACE / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py"
    assert str(header["sdk_version"]).split(".")[0] == gr.__version__.split(".")[0] == "6"
    assert "org/duda-mitb0-gta2cs" in header["models"]
    assert {"title", "emoji", "colorFrom", "colorTo", "license", "short_description"} <= set(header)
    requirements = (SPACE / "requirements.txt").read_text().lower()
    for package in ("gradio", "transformers", "huggingface-hub", "safetensors", "torch", "pillow", "numpy", "onnxruntime"):
        assert package in requirements
    assert "duda" not in requirements

    def imported(name: str) -> set[str]:
        return {
            alias.name.split(".")[0] if isinstance(node, ast.Import) else (node.module or "").split(".")[0]
            for node in ast.walk(ast.parse((SPACE / name).read_text()))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        }

    # the page imports the Space's own modules beside it: the model side and the images in and out, neither with Gradio
    own = {"segmenter", "images"}
    ui, model, images = imported("app.py"), imported("segmenter.py"), imported("images.py")
    assert own <= ui and "gradio" not in model | images  # the model side and the images run without the page
    # onnxruntime: imported only when the model has an ONNX file (DUDA_RUNTIME)
    third_party = (ui | model | images) - set(sys.stdlib_module_names) - own
    assert third_party == {"gradio", "numpy", "torch", "PIL", "transformers", "huggingface_hub", "safetensors", "onnxruntime"}


def test_examples_are_small_generated_street_images():
    examples = sorted(SPACE.glob("examples/*"))
    assert 2 <= len(examples) <= 3
    for path in examples:
        assert path.stat().st_size < 100_000
        assert _size(path) == (1024, 512)


def test_palette_and_class_names_match_the_library(app):
    model_side = importlib.import_module("segmenter")  # beside app.py, which imports it
    assert app.CITYSCAPES_CLASSES == model_side.CITYSCAPES_CLASSES == CITYSCAPES_CLASSES
    assert model_side.CITYSCAPES_PALETTE == CITYSCAPES_PALETTE


# ---------------------------------------------------------------------------------------------------------------------
# Pure helpers


def test_class_shares_and_nearest_resize_exact(app):
    label_map = np.array([[0, 0, 10, 10], [0, 13, 13, 13]], np.uint8)
    assert app.class_shares(label_map, CITYSCAPES_CLASSES) == {"road": 0.375, "car": 0.375, "sky": 0.25}
    assert app.resize_nearest(label_map, 4, 8).tolist()[0] == [0, 0, 0, 0, 10, 10, 10, 10]
    assert app.resize_nearest(label_map, 4, 8)[2:].tolist() == [[0, 0, 13, 13, 13, 13, 13, 13]] * 2
    assert app.resize_nearest(label_map, 2, 2).tolist() == [[0, 10], [13, 13]]  # pixel centres: columns 1 and 3


def test_downscale_to_cap_keeps_aspect_and_leaves_small_images(app):
    assert app.downscale_to_cap(Image.new("RGB", (4096, 1024))).size == (app.MAX_SIDE, app.MAX_SIDE // 4)
    assert app.downscale_to_cap(Image.new("RGB", (1000, 3000)), 300).size == (100, 300)
    small = Image.new("RGB", (8, 8))
    assert app.downscale_to_cap(small) is small


def test_overlay_opacity_is_the_masks_transparency(app):
    component = app.ClassOverlay(render=False)
    label_map = np.array([[0, 13], [13, 13]], np.uint8)
    for opacity, alpha in ((0.25, 64), (1.0, 255), (0.0, 0)):
        data = component.postprocess(app.Overlay(Image.new("RGB", (2, 2)), label_map, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, opacity))
        assert [a.label for a in data.annotations] == ["road", "car"]
        with Image.open(data.annotations[1].image.path) as mask:
            rgba = np.asarray(mask.convert("RGBA"))
        assert rgba[..., 3].tolist() == [[0, alpha], [alpha, alpha]]  # road's pixel is see-through in car's mask
        assert tuple(rgba[1, 1, :3]) == CITYSCAPES_PALETTE[13]


# ---------------------------------------------------------------------------------------------------------------------
# The endpoint


def test_segment_endpoint_returns_overlay_legend_shares_and_timing(space):
    result = space.segment(SPACE / "examples" / "street_dusk.jpg")
    assert result[1] is None  # no teacher configured
    _check_overlay(result, (1024, 512))
    assert "image 1024x512" in result[3] and "downscaled" not in result[3]


def _rgba(path: Path) -> Path:
    pixels = np.zeros((32, 64, 4), np.uint8)
    pixels[:, 32:] = (0, 200, 0, 255)  # left half fully transparent
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def test_rgba_transparency_is_composited_over_white(space, tmp_path):
    result = space.segment(_rgba(tmp_path / "rgba.png"))
    _check_overlay(result, (64, 32))
    with Image.open(result[0]["image"]) as base:
        assert np.asarray(base.convert("RGB"))[16, 8].min() > 240  # white, not black
        assert np.asarray(base.convert("RGB"))[16, 50, 1] > 150


@pytest.mark.parametrize("mode", ["L", "I;16", "P", "1", "CMYK"])
def test_other_colour_modes_are_segmented(space, tmp_path, mode):
    image = Image.fromarray(np.tile(np.arange(48, dtype=np.uint8) * 5, (24, 1)), "L")
    if mode == "I;16":
        image = Image.fromarray(np.tile(np.arange(48, dtype=np.uint16) * 1365, (24, 1)))
        assert image.mode == "I;16"
    elif mode != "L":
        image = image.convert(mode)
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    image.save(path)
    result = space.segment(path)
    _check_overlay(result, (48, 24))
    if mode == "I;16":
        with Image.open(result[0]["image"]) as base:  # 16-bit values scaled to 8 bits, not clipped to white
            assert 200 < np.asarray(base.convert("L"))[12, 47] and np.asarray(base.convert("L"))[12, 20] < 160


def test_exif_rotated_photo_is_shown_upright(space, tmp_path):
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer rotates 90 degrees clockwise, the left half ends on top
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    result = space.segment(path)
    _check_overlay(result, (32, 64))
    with Image.open(result[0]["image"]) as base:
        upright = np.asarray(base.convert("RGB")).astype(int)
    assert upright[8, 16, 0] > 200 and upright[8, 16, 2] < 60  # top: red
    assert upright[56, 16, 2] > 200 and upright[56, 16, 0] < 60  # bottom: blue


@pytest.mark.parametrize("size", [(8, 8), (1, 1), (3, 1)])
def test_tiny_images_are_segmented(space, tmp_path, size):
    path = tmp_path / "tiny.png"
    Image.new("RGB", size, (90, 90, 90)).save(path)
    _check_overlay(space.segment(path), size)


def test_large_image_is_downscaled_for_inference_and_shown_at_original_size(space, app, tmp_path):
    path = tmp_path / "large.jpg"
    with Image.open(SPACE / "examples" / "street_dusk.jpg") as example:
        example.resize((3000, 1500)).save(path, quality=80)
    result = space.segment(path)
    _check_overlay(result, (3000, 1500))
    assert f"downscaled to {app.MAX_SIDE}x{app.MAX_SIDE // 2} for inference" in result[3]


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs: a message, never a traceback


def _error_message(space, path) -> str:
    with pytest.raises(gradio_client.exceptions.AppError) as caught:
        space.segment(path)
    message = str(caught.value)
    assert "Traceback" not in message and 'File "' not in message
    return message


def test_empty_submit_says_to_upload_an_image(space):
    assert "No image: upload a street photo" in _error_message(space, None)


@pytest.mark.parametrize(
    "name, content",
    [
        ("notes.txt", b"not an image at all\n"),
        ("fake.png", b"\x00\x01 definitely not a PNG " * 20),
        ("drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        ("empty.jpg", b""),
    ],
)
def test_non_image_upload_is_named_and_explained(space, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    message = _error_message(space, path)
    assert f"'{name}' is not an image this demo can read" in message and "PNG, JPEG" in message


def test_truncated_image_is_reported_as_undecodable(space, tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes((SPACE / "examples" / "street_dusk.jpg").read_bytes()[:3000])
    message = _error_message(space, path)
    assert "'cut.jpg' looks like an image but could not be decoded" in message


def test_image_above_the_pixel_limit_is_refused_with_the_limit(space, app, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (8000, 6400)).save(path, compress_level=1)  # 51.2 megapixels, a small file
    message = _error_message(space, path)
    assert "too large (8000x6400 = 51 megapixels)" in message and f"up to {app.MAX_PIXELS / 1e6:.0f} megapixels" in message


# ---------------------------------------------------------------------------------------------------------------------
# Models: a clear page when loading fails, the teacher beside the student, loaded once


def _training_plots(demo) -> list:
    return [block for block in demo.blocks.values() if "training-plot" in (block.elem_classes or [])]


def _markdown(demo) -> str:
    return "\n".join(block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown) and block.value)


def test_the_page_describes_each_model_from_its_own_card_and_config(app, tiny_model, tmp_path):
    """Two different models, two true descriptions: a run's export by its own card (summary, reported result, the
    training pictures it shows), a model without a card by its config alone."""
    from duda_hf.cli.training_run import write_plots
    from duda_hf.data.labels import CITYSCAPES_CLASSES
    from duda_hf.export.model_card import build_model_card, card_plots

    carded = tmp_path / "self_training_student"
    shutil.copytree(tiny_model, carded)
    student = {"mIoU": 0.3141, "per_class_iou": dict.fromkeys(CITYSCAPES_CLASSES, 0.3141), "num_images": 7}
    history = [{"step": 4, "eval_student_mIoU": 20.0, "eval_teacher_mIoU": 21.0}, {"step": 8, "eval_student_mIoU": 31.41}]
    results = {
        "method": "self_training",
        "student": student,
        "teacher": student,
        "history": history,
        "recipe": {
            "method": "self_training",
            "student": "tiny",
            "source_dataset": "GTA5",
            "target_dataset": "ACDC",
            "target_eval_dataset": "ACDC",
            "origins": {
                "source": {"name": "GTA5", "hub_id": None, "native": "gta5"},
                "target": {"name": "ACDC", "hub_id": None, "native": "acdc"},
                "target_eval": {"name": "ACDC", "hub_id": None, "native": "acdc"},
            },
        },
    }
    write_plots(results, tmp_path / "plots", carded / "plots")
    build_model_card(results, "me/st-acdc", eval_size_hw=(64, 128), plots=card_plots(carded)).save(carded / "README.md")

    with_card = app.build_demo(model=str(carded))
    text = _markdown(with_card)
    assert f"**Model:** `{carded}`, a SegformerForSemanticSegmentation with 19 classes (" in text
    assert "Its card reports mIoU 31.41 on ACDC (validation)." in text
    assert (
        "> A **Segformer (tiny)** for semantic segmentation into the 19 Cityscapes classes on **ACDC**, adapted without target labels from **GTA5** by self-training"
        in text
    )
    pictures = {block.label: block for block in _training_plots(with_card)}
    assert list(pictures) == ["Target mIoU of the networks over training", "Per-class IoU at the end of training"]
    shown = Path(pictures["Target mIoU of the networks over training"].value["path"])
    assert shown.read_bytes() == (carded / "plots" / "miou_over_training.png").read_bytes()

    bare = app.build_demo(model=str(tiny_model))
    text = _markdown(bare)
    assert f"**Model:** `{tiny_model}`, a SegformerForSemanticSegmentation with 19 classes (" in text
    assert "It has no model card, so nothing more is known about how it was trained." in text
    assert "self-training" not in text and "Its card reports" not in text
    assert not _training_plots(bare)

    # a third-party card: its first prose paragraph, even one that opens in bold; pictures from elsewhere are not fetched
    third = tmp_path / "third_party"
    shutil.copytree(tiny_model, third)
    (third / "README.md").write_text(
        "---\nlicense: mit\n---\n# A model\n\n![banner](https://example.com/banner.png)\n\n- a list, not a summary\n\n"
        "**Street segmenter** fine-tuned by someone else.\n\nMore text.\n"
    )
    text = _markdown(app.build_demo(model=str(third)))
    assert "> **Street segmenter** fine-tuned by someone else." in text and "It has no model card" not in text


def test_missing_model_fails_fast_offline_with_the_fix(app, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import: is_offline_mode() returns it
    monkeypatch.delenv("DUDA_MODEL", raising=False)
    start = time.perf_counter()
    demo = app.build_demo()
    assert time.perf_counter() - start < 15
    banners = [b.value for b in demo.blocks.values() if "model-error" in (getattr(b, "elem_classes", None) or [])]
    assert len(banners) == 1
    for expected in ("Model not loaded", "org/duda-mitb0-gta2cs", "HF_HUB_OFFLINE is set", "set DUDA_MODEL to a local folder"):
        assert expected in banners[0]
    running = Running(demo)
    try:
        message = _error_message(running, SPACE / "examples" / "street_dusk.jpg")
    finally:
        running.close()
    assert "Could not load the model 'org/duda-mitb0-gta2cs'" in message and "DUDA_MODEL=path/to/student" in message


def test_missing_folder_and_folder_without_weights_are_explained(app, tmp_path):
    with pytest.raises(app.ModelLoadError, match=r"'\./no/such/student': there is no such folder\. To fix it, set DUDA_MODEL"):
        app.load_segmenter("./no/such/student")
    with pytest.raises(app.ModelLoadError, match=r"from the folder: .*To fix it, set DUDA_TEACHER"):
        app.load_segmenter(str(tmp_path), "DUDA_TEACHER")


def test_teacher_beside_student_and_each_model_loads_once(app, tiny_model, monkeypatch):
    loads = []
    loader = importlib.import_module("segmenter").AutoModelForSemanticSegmentation  # the class the Space loads with
    original = loader.from_pretrained

    def counting(source, **kwargs):
        loads.append(source)
        return original(source, **kwargs)

    monkeypatch.setattr(loader, "from_pretrained", counting)
    running = Running(app.build_demo(model=str(tiny_model), teacher=str(tiny_model)))
    try:
        for _ in range(2):
            result = running.segment(SPACE / "examples" / "street_game_style.jpg")
    finally:
        running.close()
    assert len(loads) == 2  # student and teacher, at start-up only
    names = _check_overlay(result, (1024, 512))
    teacher = result[1]
    assert _size(teacher["image"]) == (1024, 512) and [a["label"] for a in teacher["annotations"]] == names
    assert "student agrees with the teacher on 100.0% of pixels" in result[3]


def test_requests_are_queued_one_at_a_time(space, app, monkeypatch):
    spans = []
    predict = app.Segmenter.predict

    def slow_predict(self, image):
        begin = time.perf_counter()
        time.sleep(0.3)
        result = predict(self, image)
        spans.append((begin, time.perf_counter()))
        return result

    monkeypatch.setattr(app.Segmenter, "predict", slow_predict)
    upload = gradio_client.handle_file(str(SPACE / "examples" / "street_dusk.jpg"))
    jobs = [space.client.submit(upload, 0.6, api_name="/segment") for _ in range(3)]
    for job in jobs:
        job.result(timeout=60)
    spans.sort()
    assert len(spans) == 3
    assert all(previous_end <= begin for (_, previous_end), (begin, _) in itertools.pairwise(spans))  # never two at once


@pytest.mark.parametrize("broken", ["no config.json", "truncated model.safetensors"])
def test_a_broken_model_folder_gives_the_banner_not_a_crash(app, tiny_model, tmp_path, broken):
    from .conftest import broken_model_copy

    # used to raise (RuntimeError without config.json, SafetensorError when truncated): the server never started
    demo = app.build_demo(model=str(broken_model_copy(tiny_model, tmp_path / "student", broken)))
    banners = [b.value for b in demo.blocks.values() if "model-error" in (getattr(b, "elem_classes", None) or [])]
    assert len(banners) == 1, banners
    expected = "it has no config.json" if broken == "no config.json" else "its model.safetensors is truncated or damaged"
    assert expected in banners[0] and "set DUDA_MODEL to a local folder" in banners[0]


def _visit(url: str, path: Path, start):
    """One visitor: its own client, waiting at `start` so that every visitor submits at the same moment."""
    client = gradio_client.Client(url, verbose=False)
    upload = gradio_client.handle_file(str(path))
    start.wait()
    began = time.perf_counter()
    try:
        return "answered", client.predict(upload, 0.6, api_name="/segment"), time.perf_counter() - began
    except gradio_client.utils.QueueError as err:
        return "refused", str(err), time.perf_counter() - began
    except Exception as err:  # a lost response: RemoteProtocolError, a truncated file, ...
        return "lost", f"{type(err).__name__}: {err}", time.perf_counter() - began


@pytest.mark.slow
@pytest.mark.parametrize("images", ["identical", "distinct"])
def test_twenty_concurrent_visitors_each_get_an_answer_or_the_queue_message(space, app, tmp_path, images):
    """20 visitors at once (127.0.0.1): none is lost; beyond the queue, the queue message.

    With identical images every visitor's overlay has the same bytes, so the same cache file: Gradio's own cache
    writer rewrote it in place while other responses streamed it, and 1-4 of 20 responses were lost.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    with Image.open(SPACE / "examples" / "street_dusk.jpg") as example:
        street = example.convert("RGB").resize((512, 256))
    paths = []
    for number in range(20):
        path = tmp_path / f"street_{number if images == 'distinct' else 0}.png"
        if not path.exists():
            picture = street.copy()
            picture.putpixel((0, 0), (number, number, number))
            picture.save(path)
        paths.append(path)
    start = threading.Barrier(len(paths))
    with ThreadPoolExecutor(len(paths)) as pool:
        outcomes = list(pool.map(lambda path: _visit(space.url, path, start), paths))
    counts = {kind: sum(outcome[0] == kind for outcome in outcomes) for kind in ("answered", "refused", "lost")}
    latencies = sorted(seconds for kind, _, seconds in outcomes if kind == "answered")
    print(f"{images}: {counts}; latency of the answered {latencies[0]:.2f} / {latencies[len(latencies) // 2]:.2f} / {latencies[-1]:.2f} s")
    assert counts["lost"] == 0, [detail for kind, detail, _ in outcomes if kind == "lost"]
    assert counts["answered"] >= min(20, app.QUEUE_MAX_SIZE + app.QUEUE_CONCURRENCY)
    for kind, detail, _ in outcomes:
        if kind == "answered":
            _check_overlay(detail, (512, 256))
        else:
            assert "Queue is full" in detail


# ---------------------------------------------------------------------------------------------------------------------
# A real browser


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        if REQUIRED:
            pytest.fail("Debian's chromium is not installed and DUDA_REQUIRE_SYSTEM_TESTS=1 (.ci/run installs it)", pytrace=False)
        pytest.skip("chromium not installed: apt-get install chromium")
    return path


class Browser:
    """Debian's Chromium driven by Playwright, headless, with every request outside 127.0.0.1 refused."""

    def __enter__(self):
        sync_api = _require("playwright.sync_api", "driving Chromium")
        executable = _chromium()
        self._playwright = sync_api.sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        return self

    def open(self, url: str):
        page = self._browser.new_page(viewport={"width": 1400, "height": 1000})
        local = re.compile(r"^(https?|wss?)://(127\.0\.0\.1|localhost)[:/]")
        page.route("**/*", lambda route: route.continue_() if local.match(route.request.url) else route.abort())
        page.goto(url, wait_until="domcontentloaded")
        page.locator("#segment-button").wait_for(state="visible", timeout=30_000)
        return page

    def __exit__(self, *exc):
        self._browser.close()
        self._playwright.stop()


def _upload(page, path: Path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(path))


def _segment_on_page(page, image: Path) -> float:
    """Upload `image`, press Segment, wait for the legend and the timing; the seconds from the click."""
    _upload(page, image)
    page.locator("#input-image img").first.wait_for(state="visible", timeout=30_000)
    start = time.perf_counter()
    page.locator("#segment-button").click()
    page.locator("#student-overlay .legend-item").first.wait_for(state="visible", timeout=60_000)
    page.get_by_text(re.compile(r"Inference time: \d+\.\d\d s")).wait_for(state="visible", timeout=60_000)
    return time.perf_counter() - start


def browser_round_trip(url: str, image: Path, screenshot: Path) -> tuple[float, list[str], str]:
    """Segment `image` in Chromium and keep a screenshot.

    Returns:
        `(seconds from the click to the legend and timing on the page, legend labels, timing text)`.
    """
    with Browser() as browser:
        page = browser.open(url)
        seconds = _segment_on_page(page, image)
        legend = page.locator("#student-overlay .legend-item").all_inner_texts()
        timing = page.locator("#timing").inner_text()
        page.screenshot(path=str(screenshot), full_page=True)
    return seconds, legend, timing


def test_browser_upload_shows_legend_and_timing_and_opacity_redraws(space, tmp_path):
    screenshot = tmp_path / "space.png"
    with Browser() as browser:
        page = browser.open(space.url)
        seconds = _segment_on_page(page, SPACE / "examples" / "street_dusk.jpg")
        legend = page.locator("#student-overlay .legend-item").all_inner_texts()
        timing = page.locator("#timing").inner_text()
        page.screenshot(path=str(screenshot), full_page=True)
        mask = page.locator("#student-overlay img.mask").first
        before = mask.get_attribute("src")
        page.locator("#opacity input[type=number]").fill("0.2")
        page.locator("#opacity input[type=number]").press("Enter")
        page.wait_for_function(
            "before => document.querySelector('#student-overlay img.mask').getAttribute('src') !== before", arg=before, timeout=30_000
        )
        after_legend = page.locator("#student-overlay .legend-item").all_inner_texts()
    print(f"browser round trip (tiny model, 1024x512): {seconds:.2f} s; screenshot {screenshot}")
    assert legend and set(legend) <= set(CITYSCAPES_CLASSES) and after_legend == legend
    assert "image 1024x512" in timing
    assert _size(screenshot)[0] >= 1400 and screenshot.stat().st_size > 10_000
    assert seconds < 3.0, f"{seconds:.2f} s from click to legend"


def test_browser_shows_messages_for_empty_submit_and_non_images(space, tmp_path):
    text_file, fake_png = tmp_path / "notes.txt", tmp_path / "fake.png"
    text_file.write_text("not an image\n")
    fake_png.write_bytes(b"\x00\x01 definitely not a PNG " * 20)
    with Browser() as browser:
        page = browser.open(space.url)
        page.locator("#segment-button").click()
        page.get_by_text("No image: upload a street photo").first.wait_for(state="visible", timeout=30_000)
        _upload(page, text_file)  # the page itself refuses a file that is not image/*
        page.get_by_text("Invalid file type: notes.txt").first.wait_for(state="visible", timeout=30_000)
        _upload(page, fake_png)  # named like an image: the server reads it and says what is wrong
        page.locator("#segment-button").click()
        page.get_by_text("'fake.png' is not an image this demo can read").first.wait_for(state="visible", timeout=30_000)
        page.screenshot(path=str(tmp_path / "messages.png"), full_page=True)
        body = page.locator("body").inner_text()
    assert "Traceback" not in body and 'File "' not in body


@pytest.mark.slow
def test_browser_round_trip_with_b0_at_1024x512(tmp_path_factory, app, tmp_path):
    """The issue's bar: B0 student, 1024x512 street image, legend on the page within 3 s on this CPU.

    Asserted with head-room (machines running other jobs); the measured figure is printed.
    """
    b0 = _export(tmp_path_factory.mktemp("space_b0") / "mit-b0", "mit-b0", (512, 1024))
    running = Running(app.build_demo(model=str(b0)))
    try:
        seconds, legend, timing = browser_round_trip(running.url, SPACE / "examples" / "street_dusk.jpg", tmp_path / "b0.png")
    finally:
        running.close()
    print(f"browser round trip (B0, 1024x512): {seconds:.2f} s; {timing}")
    assert legend and "image 1024x512" in timing
    assert seconds < 6.0, f"{seconds:.2f} s from click to legend with B0"


@pytest.mark.slow
def test_an_onnx_student_answers_through_onnx_runtime_like_pytorch(app, tmp_path, monkeypatch):
    from duda_hf.export.onnx_export import export_onnx

    folder = _export(tmp_path / "tiny", "tiny", (64, 128))
    export_onnx(folder, quantize=False)
    image = app.read_image(SPACE / "examples" / "street_dusk.jpg")
    monkeypatch.setenv("DUDA_RUNTIME", "pytorch")
    torch_map, _ = app.load_segmenter(str(folder)).predict(image)
    monkeypatch.setenv("DUDA_RUNTIME", "auto")  # onnx/model.onnx is there and onnxruntime installed: ONNX Runtime answers
    onnx_segmenter = app.load_segmenter(str(folder))
    assert onnx_segmenter.runtime.startswith("ONNX Runtime") and "onnx/model.onnx" in onnx_segmenter.runtime
    onnx_map, _ = onnx_segmenter.predict(image)
    assert np.mean(onnx_map == torch_map) >= 0.999  # fp32 ONNX logits within 1e-3 of PyTorch's: ties aside, the same map
    running = Running(app.build_demo(model=str(folder)))
    try:
        result = running.segment(SPACE / "examples" / "street_dusk.jpg")
    finally:
        running.close()
    _check_overlay(result, (1024, 512))
    assert "(student, ONNX Runtime" in result[3]


def test_an_onnx_runtime_asked_for_but_missing_is_a_load_error(app, tiny_model, monkeypatch):
    monkeypatch.setenv("DUDA_RUNTIME", "onnx")
    with pytest.raises(
        app.ModelLoadError, match=r"DUDA_RUNTIME=onnx but the model has no onnx/model.onnx \(export it with duda-export-onnx\)"
    ):
        app.load_segmenter(str(tiny_model))
    monkeypatch.setenv("DUDA_RUNTIME", "tensorrt")
    with pytest.raises(app.ModelLoadError, match="DUDA_RUNTIME='tensorrt' is not one of"):
        app.load_segmenter(str(tiny_model))


def test_a_vit_backbone_model_gets_whole_patches_as_duda_hf_gives_them(tmp_path):
    """A UperNet on DINOv2 at an input size that is no multiple of its 14-pixel patches: the Space's logits are
    duda-hf's (`run_network`), not those of the input cut at the last whole patch."""
    import torch

    from duda_hf.export.network import export_network
    from duda_hf.networks.inputs import run_network
    from duda_hf.networks.loading import build_network

    torch.manual_seed(0)
    folder = export_network(build_network("dinov2-upernet-tiny"), tmp_path / "upernet", eval_size_hw=(64, 50))
    segmenter = load_space().load_segmenter(str(folder))
    pixels = segmenter.pixel_values(Image.new("RGB", (90, 120), (90, 120, 30)))
    assert tuple(pixels.shape[-2:]) == (64, 50)
    with torch.no_grad():
        expected = run_network(segmenter.model, pixels).logits
        assert torch.equal(segmenter._logits(pixels), expected)
        assert not torch.equal(segmenter.model(pixel_values=pixels).logits, expected)
    label_map, _ = segmenter.predict(Image.new("RGB", (90, 120)))
    assert label_map.shape == (120, 90)
