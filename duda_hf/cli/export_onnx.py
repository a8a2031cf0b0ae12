"""Add ONNX files to an exported model folder (a run's student/): fp32 and int8, in the layout transformers.js reads.

Writes MODEL_DIR/onnx/model.onnx (fp32; input pixel_values (N, 3, H, W), output logits, batch, height and
width dynamic) and MODEL_DIR/onnx/model_quantized.onnx (int8: ONNX Runtime dynamic quantization, what
transformers.js loads as dtype "q8"), beside config.json and preprocessor_config.json, so that the same folder
or Hub repo serves transformers, ONNX Runtime and transformers.js. The files are checked against PyTorch
before the folder is renamed into place; an older onnx/ is replaced only then. A progress bar on stderr shows the
time left (the exporter's stages, the int8 quantization, the check). See docs/deployment.md.

Needs the `onnx` extra: pip install "duda-hf[onnx]".

Example (`duda-export-onnx` is the same as `python scripts/export_onnx.py` in a clone):
    duda-export-onnx --model_dir outputs/gta2cs/student
"""

from __future__ import annotations

import argparse
import sys

from duda_hf.cli.errors import program


@program
def main(argv: list[str] | None = None) -> int:
    from duda_hf.export.onnx_export import FP32_TOLERANCE, OPSET

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="exported model folder (config.json, model.safetensors, ...)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, 18 or above (default {OPSET})")
    parser.add_argument("--no_quantize", action="store_true", help="write the fp32 file only")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=FP32_TOLERANCE,
        help=f"largest |logits difference| allowed between the fp32 file and PyTorch on a check image (default {FP32_TOLERANCE:g})",
    )
    args = parser.parse_args(argv)
    from duda_hf.export.onnx_export import export_onnx, onnx_summary

    result = export_onnx(args.model_dir, opset=args.opset, quantize=not args.no_quantize, tolerance=args.tolerance, progress=True)
    print(onnx_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
