"""The exported student as ONNX, fp32 and int8, in the layout transformers.js reads, and run back with ONNX Runtime.

`export_onnx(model_dir)` adds to an exported student folder (a run's `student/`: config.json,
model.safetensors, preprocessor_config.json; SegFormer or any other `AutoModelForSemanticSegmentation` family)

    onnx/model.onnx             fp32, input `pixel_values` (N, 3, H, W), output `logits` (N, 19, h, w), h and w
                                at the network's output stride (H/4, W/4 for SegFormer)
    onnx/model_quantized.onnx   int8 weights (ONNX Runtime dynamic quantization, as transformers.js's `q8`)

so that one folder (one Hub repo) serves transformers in Python, ONNX Runtime and transformers.js in the
browser. Batch, height and width are dynamic.

- Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export, then onnxscript), opset 18 by default. The
  TorchScript exporter also exports SegFormer with dynamic height and width, but it is deprecated since
  torch 2.9 and warns on every call; the torch.export graph is also smaller (no shape arithmetic in Gather /
  Unsqueeze chains) and runs as fast in ONNX Runtime. 18 is the lowest opset the dynamo exporter writes; every
  operator of the graph (Conv, MatMul, LayerNormalization, Softmax, Erf, Resize ...) exists in onnxruntime-web.
- int8: dynamic quantization (`onnxruntime.quantization.quantize_dynamic`): weights of every Conv and MatMul
  stored as uint8 with one scale per tensor, activations quantized on the fly per call. It is what transformers.js
  (and optimum) publish as `model_quantized.onnx`: the browser's `dtype: "q8"` loads it. uint8 rather than int8
  weights because the graph has Conv layers: onnxruntime-web has no ConvInteger kernel for int8 weights (the
  rule of transformers.js's own quantize script). Static (QDQ) quantization would need calibration images and
  ties the activation ranges to them; docs/deployment.md gives the measured costs of both.
- The folder is written atomically: everything goes to a temporary folder inside `model_dir`, which is renamed
  to `onnx/` when complete (an older `onnx/` is replaced only then).
- Progress (`progress=True`, as `duda-export-onnx` runs it): a tqdm bar on stderr with the time left, one step per
  stage of the exporter (torch.export, decompositions, translation to ONNX, graph optimisation: the minutes of a
  large network), one for the int8 quantization and one for the parity check on its image.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

OPSET = 18
ONNX_FOLDER = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
# The example input the graph is traced with: batch 2 and height != width, so that torch.export keeps all three
# dimensions symbolic (a size of 1, or two equal sizes, would be specialised or tied).
EXAMPLE_SHAPE = (2, 3, 128, 192)
# The parity check after export: another batch and shape than the example, and the tolerance on the logits.
CHECK_SHAPE = (1, 3, 96, 160)
FP32_TOLERANCE = 1e-3
INSTALL_HINT = 'pip install "duda-hf[onnx]" (onnx, onnxruntime, onnxscript)'
# The stages torch.onnx.export(dynamo=True, verbose=True) reports on stdout ("[torch.onnx] <stage>..." when it
# starts, "... ✅" when it is done): the progress bar's first steps.
EXPORT_STAGES = {
    "Obtain model graph": "torch.export",
    "Run decompositions": "decompositions",
    "Translate the graph into ONNX": "translation to ONNX",
    "Optimize the ONNX graph": "graph optimisation",
}


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


class _Quiet(logging.Filter):
    """Drops ONNX Runtime's advice to pre-process the model before quantizing (logged on the root logger):
    transformers.js quantizes the exported graph as it is, and so does this module."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


class _StageProgress(io.TextIOBase):
    """The exporter's stdout, swallowed: each stage it reports done advances `bar` by a step, each one it starts is
    named on the bar. Lines it does not know (another torch version's) are dropped; `finish` then makes up the count."""

    def __init__(self, bar):
        self.bar, self.pending, self.done = bar, "", 0

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            stage = next((name for key, name in EXPORT_STAGES.items() if key in line), None)
            if stage is None:
                continue
            if line.rstrip().endswith("✅") and self.done < len(EXPORT_STAGES):
                self.done += 1
                self.bar.update(1)
            elif not line.rstrip().endswith(("✅", "❌")):
                self.bar.set_postfix_str(stage)
        return len(text)

    def finish(self) -> None:
        self.bar.update(len(EXPORT_STAGES) - self.done)
        self.done = len(EXPORT_STAGES)


class OnnxExportError(RuntimeError):
    """A model folder that cannot be exported, a missing package, or an export that does not match PyTorch."""


def require_onnx_packages() -> None:
    """OnnxExportError naming the install command when onnx, onnxruntime or onnxscript is missing (check before training)."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxExportError(f"the ONNX export needs {', '.join(missing)}: {INSTALL_HINT}")


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """The folder, if it holds an exported SegFormer (config.json and complete safetensors); OnnxExportError otherwise."""
    from duda_hf.networks.checks import check_model_folder
    from duda_hf.networks.loading import ModelUnavailableError

    folder = Path(model_dir)
    if not folder.is_dir():
        raise OnnxExportError(
            f"--model_dir '{folder}' is not a folder. Pass an exported model folder: a training run writes one to "
            "OUTPUT_DIR/student (config.json, model.safetensors, preprocessor_config.json)."
        )
    try:
        check_model_folder(folder, "--model_dir")
    except ModelUnavailableError as error:
        raise OnnxExportError(str(error)) from None
    return folder


class _LogitsOnly(torch.nn.Module):
    """`pixel_values -> logits`: the graph's one input and one output, named as transformers.js expects."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def load_network(model_dir: str | os.PathLike):
    """The folder's segmentation network (any `AutoModelForSemanticSegmentation` family) in eval mode, fp32 (what the
    export traces)."""
    from transformers import AutoModelForSemanticSegmentation

    folder = check_model_dir(model_dir)
    return AutoModelForSemanticSegmentation.from_pretrained(folder, dtype=torch.float32).eval()


def export_fp32(model: torch.nn.Module, path: str | os.PathLike, opset: int = OPSET, bar=None) -> Path:
    """Write `model` (any segmentation network) as one ONNX file with dynamic batch, height and width; returns the path.

    `bar`: a tqdm bar that takes one step per stage of the exporter (`EXPORT_STAGES`); None: no progress.
    """
    import onnx
    from torch.export import Dim

    parameter = next(model.parameters())
    example = torch.zeros(EXAMPLE_SHAPE, device=parameter.device, dtype=parameter.dtype)
    dynamic = {INPUT_NAME: {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}}
    path = Path(path)
    # the exporter reports its stages on stdout (kept off the caller's stdout: they move the bar, if any) and warns
    # about optional torchvision ops: not the caller's concern
    stages = _StageProgress(bar) if bar is not None else io.StringIO()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(stages), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _LogitsOnly(model).eval(),
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic,
                verbose=bar is not None,
            )
    finally:
        registration.setLevel(level)
    if bar is not None:
        stages.finish()
    proto = program.model_proto
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [axis for axis in (2, 3) if not dims[axis].dim_param]
    if fixed:  # the exporter fell back to the traced size: the forward computes with the input size in Python
        size = "x".join(str(dims[axis].dim_value) for axis in (2, 3))
        raise OnnxExportError(
            f"{type(model).__name__} could only be exported for its example input size {size}: its forward computes "
            "with the input's height and width in Python (for example TF-style 'same' padding, `tf_padding` in "
            "MobileNet configs), so the ONNX height and width cannot be dynamic. Nothing was written."
        )
    for node in proto.graph.node:  # the exporter's debug records (FX nodes, stack traces with local paths): 2/3 of a small file
        del node.metadata_props[:]
    onnx.save_model(proto, str(path))
    return path


def quantize_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike) -> dict:
    """ONNX Runtime dynamic quantization of `fp32_path`, as transformers.js's `q8`; returns its settings.

    uint8 weights, one scale per tensor, for Conv and MatMul (the integer ops of ONNX Runtime's registry);
    activations are quantized per call (dynamic), so no calibration data is needed.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    op_types = sorted(IntegerOpsRegistry)
    quiet = _Quiet()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        quantize_dynamic(
            fp32_path,
            int8_path,
            op_types_to_quantize=op_types,
            per_channel=False,
            reduce_range=False,
            weight_type=QuantType.QUInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.removeFilter(quiet)
    return {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weights": "uint8, per tensor",
        "activations": "uint8, dynamic (per call)",
        "op_types": op_types,
    }


class OnnxSegmenter:
    """An ONNX Runtime session called like a transformers SegFormer: `model(pixel_values=x).logits`.

    The logits come back on the device and in the dtype of `pixel_values`, so `duda_hf.evaluation` scores an
    ONNX file as it scores a PyTorch model.

    Args:
        path: an `.onnx` file written by `export_onnx`.
        threads: ONNX Runtime's intra-op threads (None: its default, one per core).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        require_onnx_packages()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        array = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return SimpleNamespace(logits=torch.from_numpy(logits).to(device=pixel_values.device, dtype=pixel_values.dtype))


def _parity(model: torch.nn.Module, fp32_path: Path, int8_path: Path | None) -> dict:
    """Logits of PyTorch and of the ONNX files on one random input of `CHECK_SHAPE` (not the traced shape)."""
    parameter = next(model.parameters())
    generator = torch.Generator(device=parameter.device).manual_seed(0)
    pixels = torch.randn(CHECK_SHAPE, generator=generator, device=parameter.device, dtype=parameter.dtype)
    with torch.inference_mode():
        reference = model(pixel_values=pixels).logits
    fp32 = OnnxSegmenter(fp32_path)(pixels).logits
    result = {"input_shape": list(CHECK_SHAPE), "fp32_max_abs_diff": float((fp32 - reference).abs().max())}
    if int8_path is not None:
        int8 = OnnxSegmenter(int8_path)(pixels).logits
        result["int8_max_abs_diff"] = float((int8 - reference).abs().max())
        result["int8_argmax_agreement"] = float((int8.argmax(1) == reference.argmax(1)).float().mean())
    return result


def export_onnx(
    model_dir: str | os.PathLike,
    *,
    opset: int = OPSET,
    quantize: bool = True,
    tolerance: float | None = FP32_TOLERANCE,
    progress: bool = False,
) -> dict:
    """Add `onnx/model.onnx` (fp32) and, with `quantize`, `onnx/model_quantized.onnx` (int8) to an exported folder.

    Args:
        model_dir: an exported SegFormer folder (a run's `student/`).
        opset: the ONNX opset (18 or above: the dynamo exporter's range).
        quantize: also write the int8 file.
        tolerance: the largest absolute difference allowed between the fp32 ONNX logits and PyTorch's on a check
            input of another shape than the traced one; None skips the check.
        progress: show a progress bar with the time left on stderr (the exporter's stages, the quantization, the
            check on its image); the files are the same either way.

    Returns:
        `onnx_dir`, `files` (name -> bytes), `opset`, `exporter`, `quantization` (None without `quantize`),
        `parity` (the check's figures; None when skipped).
    """
    require_onnx_packages()
    if opset < OPSET:
        raise OnnxExportError(
            f"--opset {opset}: the exporter (torch.onnx.export with dynamo=True) writes opset {OPSET} and above; pass --opset {OPSET}"
        )
    from duda_hf.networks.inputs import input_multiple

    folder = check_model_dir(model_dir)
    model = load_network(folder)
    if getattr(model.config, "hrda_scales", None):
        raise OnnxExportError(
            f"{folder} is an HRDA network (context and sliding detail windows fused by a scale attention), whose window "
            "grid depends on the image size: the ONNX export does not handle it yet. Export a single-scale network."
        )
    if input_multiple(model) > 1:
        raise OnnxExportError(
            f"{folder} is a {type(model).__name__} on a ViT backbone (inputs padded to whole {input_multiple(model)}-pixel "
            "patches in duda-hf's inference), which the ONNX export does not handle yet: the graph would cut the "
            "input at the last whole patch. Export a SegFormer, DAFormer, MobileNetV2 or MobileViTV2 network."
        )
    target = folder / ONNX_FOLDER
    staging = Path(tempfile.mkdtemp(prefix=f".{ONNX_FOLDER}-partial-", dir=folder))
    staging.chmod(0o777 & ~_umask())  # mkdtemp's folder is private (0700); onnx/ gets the folder's usual mode
    steps = len(EXPORT_STAGES) + int(quantize) + int(tolerance is not None)
    bar = tqdm(total=steps, desc="ONNX export", unit="step", dynamic_ncols=True, disable=not progress)
    try:
        with bar:
            fp32_path = export_fp32(model, staging / FP32_FILE, opset, bar=bar if progress else None)
            quantization = None
            if quantize:
                bar.set_postfix_str("int8 quantization")
                quantization = quantize_int8(fp32_path, staging / INT8_FILE)
                bar.update(1)
            parity = None
            if tolerance is not None:
                bar.set_postfix_str("parity check on 1 image")
                parity = _parity(model, fp32_path, staging / INT8_FILE if quantize else None)
                bar.update(1)
        if parity is not None and not parity["fp32_max_abs_diff"] <= tolerance:
            raise OnnxExportError(
                f"the ONNX logits differ from PyTorch's by {parity['fp32_max_abs_diff']:.3g} (allowed {tolerance:g}) "
                f"on an input of shape {tuple(CHECK_SHAPE)}; nothing was written. Try another --opset, or report it "
                "with the torch, onnxscript and onnxruntime versions."
            )
        files = {path.name: path.stat().st_size for path in sorted(staging.iterdir())}
        if target.exists():  # replaced only now that the new folder is complete
            old = Path(tempfile.mkdtemp(prefix=f".{ONNX_FOLDER}-old-", dir=folder))
            target.rename(old / ONNX_FOLDER)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return {
        "onnx_dir": str(target),
        "files": files,
        "opset": opset,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "quantization": quantization,
        "parity": parity,
    }


def onnx_summary(result: dict) -> str:
    """A few lines on what `export_onnx` wrote, for the programs."""
    lines = [f"wrote {result['onnx_dir']} (opset {result['opset']}, {result['exporter']})"]
    lines += [f"  {name}: {size / 2**20:.2f} MiB" for name, size in result["files"].items()]
    if result["parity"]:
        parity = result["parity"]
        line = f"  check on {tuple(parity['input_shape'])}: fp32 max |diff| {parity['fp32_max_abs_diff']:.2e}"
        if "int8_argmax_agreement" in parity:
            line += f", int8 argmax agreement {100 * parity['int8_argmax_agreement']:.2f}%"
        lines.append(line)
    return "\n".join(lines)
