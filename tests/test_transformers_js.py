"""The exported student in a real browser: transformers.js (web/, npm) runs onnx/model.onnx and model_quantized.onnx in
headless Chromium from a local static server, and labels every pixel as PyTorch and ONNX Runtime do."""

import functools
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
REQUIRED = os.environ.get("DUDA_REQUIRE_SYSTEM_TESTS") == "1"  # CI: a missing browser or package fails, never skips
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
# Agreement with the reference, per pixel of the image: fp32 against PyTorch, int8 against ONNX Runtime on the same
# file (both upsample the 1/4-resolution logits bilinearly, so only near-ties at class borders may differ).
MIN_PIXEL_AGREEMENT = 0.99
# A label counts as present from this share of the pixels on (the label sets must then be equal).
MIN_LABEL_SHARE = 0.01


def _skip_or_fail(message: str):
    if REQUIRED:
        pytest.fail(f"{message} and DUDA_REQUIRE_SYSTEM_TESTS=1 (.ci/run installs it)", pytrace=False)
    pytest.skip(message)


pytest.importorskip("onnxruntime", reason='pip install -e ".[dev]" (the onnx extra)')


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        _skip_or_fail("Debian's chromium is not installed: apt-get install chromium")
    return path


def _sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("playwright is not installed: pip install -e '.[dev]'")
    return sync_playwright


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_benchmark):
    """A served folder: the page (web/), its node_modules, models/student (a tiny student with onnx/) and sample.png."""
    import datasets

    from duda_hf.export.network import export_network
    from duda_hf.export.onnx_export import export_onnx
    from duda_hf.networks.loading import build_network

    if not (WEB / "node_modules" / "@huggingface" / "transformers").is_dir():
        _skip_or_fail("web/node_modules is missing: cd web && npm ci")
    root = tmp_path_factory.mktemp("site")
    for name in ("index.html", "app.js", "node_modules"):
        (root / name).symlink_to(WEB / name)
    image = datasets.load_from_disk(tiny_benchmark["target_val"])[0]["image"].convert("RGB")
    image.save(root / "sample.png")
    torch.manual_seed(0)
    student = export_network(build_network("tiny", "random"), root / "models" / "student", (image.height, image.width))
    export_onnx(student)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", student, root / "sample.png"
    server.shutdown()


def _in_browser(url: str) -> dict:
    """Open the page in headless Chromium (requests outside 127.0.0.1 refused) and return its result."""
    local = re.compile(r"^https?://127\.0\.0\.1[:/]")
    refused = []
    with _sync_playwright()() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            messages = []
            page.on("console", lambda message: messages.append(message.text))
            page.route(
                "**/*",
                lambda route: route.continue_() if local.match(route.request.url) else (refused.append(route.request.url), route.abort()),
            )
            page.goto(url)
            page.wait_for_function("document.getElementById('status').dataset.state !== 'loading'", timeout=180_000)
            state, text = page.eval_on_selector("#status", "e => [e.dataset.state, e.textContent]")
            assert state == "done", f"{text}; console: {messages[-10:]}"
            result = page.evaluate("window.dudaResult")
        finally:
            browser.close()
    assert not refused, f"the page asked for remote files: {refused}"
    return result


def _reference(student: Path, image_path: Path, onnx_file: str | None) -> np.ndarray:
    """The class of every pixel as transformers' own post-processing gives it, from PyTorch or an ONNX file."""
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from duda_hf.export.onnx_export import OnnxSegmenter

    processor = SegformerImageProcessor.from_pretrained(student)
    image = Image.open(image_path).convert("RGB")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    model = OnnxSegmenter(student / "onnx" / onnx_file) if onnx_file else SegformerForSemanticSegmentation.from_pretrained(student).eval()
    with torch.inference_mode():
        outputs = model(pixel_values=pixels)
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0].numpy()


def _labels(classes: np.ndarray, id2label: dict) -> set[str]:
    counts = np.bincount(classes.ravel(), minlength=len(id2label)) / classes.size
    return {id2label[str(index)] for index in np.flatnonzero(counts >= MIN_LABEL_SHARE)}


@pytest.mark.slow
@pytest.mark.parametrize("dtype, onnx_file", [("fp32", None), ("q8", "model_quantized.onnx")], ids=["fp32-vs-pytorch", "q8-vs-onnxruntime"])
def test_transformers_js_labels_the_image_as_python_does(site, dtype, onnx_file):
    url, student, image_path = site
    result = _in_browser(f"{url}index.html?dtype={dtype}&image=sample.png")
    reference = _reference(student, image_path, onnx_file)
    classes = np.asarray(result["classes"]).reshape(result["height"], result["width"])
    assert classes.shape == reference.shape and (classes >= 0).all(), "every pixel has a label"
    agreement = float((classes == reference).mean())
    id2label = json.loads((student / "config.json").read_text())["id2label"]
    print(
        f"transformers.js {dtype}: {result['latency_ms']:.1f} ms per {result['width']}x{result['height']} image, agreement {agreement:.4f}"
    )
    assert agreement >= MIN_PIXEL_AGREEMENT, f"{dtype}: {agreement:.4f} of the pixels agree"
    assert set(result["shares"]) >= _labels(reference, id2label)
    assert _labels(classes, id2label) == _labels(reference, id2label)
    assert result["latency_ms"] > 0
