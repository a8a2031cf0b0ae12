"""The deployable student out of PyTorch: PyTorch fp32 vs ONNX fp32 vs ONNX int8, against the PyTorch teacher.

    python benchmarks/onnx_speed.py [--size 512 1024 --size 1024 2048] [--repeats 3] [--threads 2]
                                    [--student_dir RUN/student] [--val_dataset data_synthetic/target_val]

Speed, memory, size and parity use a random-init MiT-B0 (speed does not depend on the weights), exported with
`duda_hf.export.onnx_export.export_onnx` (fp32 and the dynamic int8 file of the transformers.js layout) plus, for
comparison only, a static QDQ int8 file calibrated on 32 images of `--calibration_dataset`. The teacher is a
random-init MiT-B5 in PyTorch fp32, the network the B0 student replaces.

- Latency: the protocol of benchmarks/inference_speed.py (whole image, batch 1, logits upsampled to the input
  size and argmaxed, the median of `repeats` calls after one warm-up), with `--threads` threads in both
  PyTorch (`torch.set_num_threads`) and ONNX Runtime (`intra_op_num_threads`). Unlike inference_speed.py, the
  networks are built and saved once by this process and each child only loads a folder or an .onnx file, so
  that a child's memory is its inference, not the building of the network.
- Memory: each (variant, size) runs in its own fresh process; `peak_mib` is its peak RSS (VmHWM of
  /proc/self/status; `ru_maxrss` would carry the forking parent's peak over `execve`) and `above_imports_mib`
  that peak minus the peak after its imports (torch, transformers, onnxruntime: the same in every child), i.e.
  weights + session + activations.
- Parity (this process): max |logits difference| against PyTorch on one random image at each size, and the
  share of pixels whose argmax agrees (at the logits' resolution, 1/4 of the input).
- Target mIoU, with `--student_dir` (a trained student, e.g. `scripts/train_duda.py --max_steps 300` then its
  student/): the same images of `--val_dataset` scored by `duda_hf.evaluation.inference.evaluate_networks` with the
  PyTorch student and with each ONNX file, at the student's evaluation size. The folder is copied, not changed.

`data_synthetic` (the default calibration and validation images) is built first when missing. Writes
benchmarks/results/onnx_speed.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from _prerequisites import INPUT_SIZES, ONNX_INSTALL, add_size_flag, command_line, fail, require_packages, synthetic_split

from duda_hf.jsonio import write_json

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("torch-fp32", "onnx-fp32", "onnx-int8", "onnx-int8-static")
TEACHER = "teacher-torch-fp32"
CALIBRATION_IMAGES = 32
# what `--student_dir` names when it is missing: a short training run on the synthetic benchmark, and its student
TRAIN_STUDENT = [
    ["scripts/make_synthetic.py", "--out", "data_synthetic"],
    ["scripts/train_duda.py", "--config", "configs/synthetic_cpu.yaml", "--max_steps", "300", "--output_dir", "outputs/onnx_student"],
]


def _peak_mib() -> float:
    """This process's peak RSS in MiB: VmHWM on Linux, else `ru_maxrss`.

    Not `ru_maxrss` on Linux: it is kept across `execve`, so a child starts with the peak of the parent it was
    forked from (here the parent holds the B5 teacher), while VmHWM belongs to the new process image.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def child(kind: str, path: str, width: int, height: int, repeats: int, threads: int) -> dict:
    """Time one network (a model folder for `torch`, an .onnx file for `onnx`) in this fresh process."""
    import onnxruntime  # noqa: F401  (imported by every child, so that the baseline is the same for all)
    import torch
    import torch.nn.functional as F
    from transformers import SegformerForSemanticSegmentation

    from duda_hf.export.onnx_export import OnnxSegmenter

    torch.set_num_threads(threads)
    imports_mib = _peak_mib()
    if kind == "torch":
        model = SegformerForSemanticSegmentation.from_pretrained(path).eval()
    else:
        model = OnnxSegmenter(path, threads=threads)
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        for run in range(repeats + 1):
            started = time.perf_counter()
            logits = model(pixel_values=image).logits
            F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False).argmax(1)
            if run:
                times.append(time.perf_counter() - started)
    peak = _peak_mib()
    return {
        "median_s": round(statistics.median(times), 4),
        "times_s": [round(t, 4) for t in times],
        "peak_mib": round(peak, 1),
        "above_imports_mib": round(peak - imports_mib, 1),
    }


def run_child(kind: str, path: Path, width: int, height: int, repeats: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, str(path), str(width), str(height), "--repeats", str(repeats)]
    command += ["--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {path} at {width}x{height} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def calibration_pixels(dataset_path: str, count: int, mean, std) -> list:
    """`count` images of a `save_to_disk` folder as normalised `(1, 3, H, W)` float32 arrays (their own size)."""
    import datasets
    import torch

    from duda_hf.data.images import to_rgb_array
    from duda_hf.networks.inputs import normalize_images

    rows = datasets.load_from_disk(dataset_path)
    pixels = []
    for index in range(min(count, len(rows))):
        image = torch.from_numpy(to_rgb_array(rows[index]["image"]).copy()).permute(2, 0, 1).unsqueeze(0).float() / 255
        pixels.append(normalize_images(image, mean, std).numpy())
    return pixels


def static_qdq(fp32_path: Path, out_path: Path, pixels: list) -> Path:
    """ONNX Runtime static quantization, QDQ format: int8 weights per channel, uint8 activations from MinMax ranges."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(pixels)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixel_values": batch}

    prepared = out_path.with_name(out_path.stem + "-prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    quantize_static(
        prepared,
        out_path,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink()
    return out_path


def onnx_files(folder: Path, calibration: list) -> dict:
    """The variants' paths for an exported folder: export_onnx's two files plus the static QDQ file."""
    from duda_hf.export.onnx_export import FP32_FILE, INT8_FILE, ONNX_FOLDER, export_onnx

    export_onnx(folder)
    onnx_dir = folder / ONNX_FOLDER
    static = static_qdq(onnx_dir / FP32_FILE, folder / "model_static_qdq.onnx", calibration)
    return {"torch-fp32": folder, "onnx-fp32": onnx_dir / FP32_FILE, "onnx-int8": onnx_dir / INT8_FILE, "onnx-int8-static": static}


def size_mib(path: Path) -> float:
    if path.is_dir():
        return round(sum(p.stat().st_size for p in path.glob("*.safetensors")) / 2**20, 2)
    return round(path.stat().st_size / 2**20, 2)


def parity(paths: dict, width: int, height: int, threads: int) -> dict:
    import torch
    from transformers import SegformerForSemanticSegmentation

    from duda_hf.export.onnx_export import OnnxSegmenter

    model = SegformerForSemanticSegmentation.from_pretrained(paths["torch-fp32"]).eval()
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model(pixel_values=image).logits
    result = {}
    for variant in VARIANTS[1:]:
        logits = OnnxSegmenter(paths[variant], threads=threads)(image).logits
        result[variant] = {
            "max_abs_diff": float((logits - reference).abs().max()),
            "argmax_agreement": round(float((logits.argmax(1) == reference.argmax(1)).float().mean()), 6),
        }
    return result


def target_miou(student_dir: Path, val_dataset: str, calibration: list, work: Path, threads: int) -> dict:
    import datasets
    import torch
    from transformers import SegformerForSemanticSegmentation

    from duda_hf.evaluation.inference import evaluate_networks
    from duda_hf.export.onnx_export import OnnxSegmenter

    folder = Path(shutil.copytree(student_dir, work / "trained_student"))
    paths = onnx_files(folder, calibration)
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    size = processor["size"]
    networks = {"torch-fp32": SegformerForSemanticSegmentation.from_pretrained(folder).eval()}
    networks.update({variant: OnnxSegmenter(paths[variant], threads=threads) for variant in VARIANTS[1:]})
    dataset = datasets.load_from_disk(val_dataset)
    matrices = evaluate_networks(
        networks,
        dataset,
        torch.device("cpu"),
        input_size_hw=(size["height"], size["width"]),
        image_mean=tuple(processor["image_mean"]),
        image_std=tuple(processor["image_std"]),
    )
    return {
        "student_dir": str(student_dir),
        "dataset": val_dataset,
        "images": len(dataset),
        "input_hw": [size["height"], size["width"]],
        "miou": {name: round(100 * matrix.compute()["mIoU"], 2) for name, matrix in matrices.items()},
        "size_mib": {variant: size_mib(paths[variant]) for variant in VARIANTS},
    }


def markdown(report: dict) -> str:
    lines = [
        "| size (WxH) | network | latency (s) | vs teacher | peak RSS (MiB) | above imports (MiB) | file (MiB) | max abs diff | argmax agreement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, row in report["results"].items():
        teacher = row[TEACHER]["median_s"]
        for name in (*VARIANTS, TEACHER):
            cell = row[name]
            check = row["parity"].get(name, {})
            diff = f"{check['max_abs_diff']:.1e}" if check else "reference" if name == "torch-fp32" else ""
            agreement = f"{100 * check['argmax_agreement']:.2f}%" if check else ""
            label = "B5 teacher, torch fp32" if name == TEACHER else f"B0 student, {name}"
            lines.append(
                f"| {size} | {label} | {cell['median_s']:.3f} | {teacher / cell['median_s']:.2f}x | {cell['peak_mib']:.0f} "
                f"| {cell['above_imports_mib']:.0f} | {report['size_mib'][name]:.2f} | {diff} | {agreement} |"
            )
    quality = report.get("target_miou")
    if quality:
        lines += ["", f"Target mIoU ({quality['images']} images of {quality['dataset']}, trained student {quality['student_dir']}):", ""]
        lines += ["| network | mIoU | file (MiB) |", "|---|---|---|"]
        lines += [f"| {name} | {value:.2f} | {quality['size_mib'][name]:.2f} |" for name, value in quality["miou"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_flag(parser)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of PyTorch and ONNX Runtime (default: one per core)")
    parser.add_argument("--student_dir", default=None, help="a trained student folder for the target mIoU (skipped without)")
    parser.add_argument("--val_dataset", default=str(ROOT / "data_synthetic" / "target_val"))
    parser.add_argument("--calibration_dataset", default=str(ROOT / "data_synthetic" / "target"), help="static QDQ calibration images")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "PATH", "W", "H"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, width, height = args.child
        print(json.dumps(child(kind, path, int(width), int(height), args.repeats, args.threads)))
        return
    require_packages("onnx", "onnxruntime", "onnxscript", install=ONNX_INSTALL)
    if args.student_dir and not (Path(args.student_dir) / "config.json").is_file():
        fail(
            f"--student_dir {args.student_dir} is not a trained student folder (no config.json); train one with "
            f"`{' && '.join(command_line(step) for step in TRAIN_STUDENT)}` and pass --student_dir outputs/onnx_student/student"
        )
    synthetic_split(args.calibration_dataset, "--calibration_dataset")  # built when it is the synthetic benchmark's
    if args.student_dir:
        synthetic_split(args.val_dataset, "--val_dataset")
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    from duda_hf.export.network import export_network
    from duda_hf.export.onnx_export import OPSET
    from duda_hf.networks.inputs import IMAGENET_MEAN, IMAGENET_STD
    from duda_hf.networks.loading import build_network

    out = Path(__file__).resolve().parent / "results" / "onnx_speed.json"
    torch.manual_seed(0)
    calibration = calibration_pixels(args.calibration_dataset, CALIBRATION_IMAGES, IMAGENET_MEAN, IMAGENET_STD)
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads in PyTorch and ONNX Runtime",
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "opset": OPSET,
        "repeats": args.repeats,
        "variants": {
            "torch-fp32": "PyTorch fp32 (transformers SegformerForSemanticSegmentation)",
            "onnx-fp32": "onnx/model.onnx (torch.onnx.export, dynamo)",
            "onnx-int8": "onnx/model_quantized.onnx (dynamic: uint8 weights per tensor, activations per call; transformers.js q8)",
            "onnx-int8-static": f"static QDQ (int8 weights per channel, uint8 activations, MinMax on {len(calibration)} target images); "
            "not written by export_onnx",
            TEACHER: "MiT-B5 in PyTorch fp32",
        },
        "results": {},
    }
    print(f"calibration: {len(calibration)} images of {args.calibration_dataset}; exporting MiT-B0 and MiT-B5 ...", flush=True)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        student = export_network(build_network("mit-b0", "random"), work / "b0")
        teacher = export_network(build_network("mit-b5", "random"), work / "b5")
        started = time.perf_counter()
        paths = onnx_files(student, calibration)
        report["export_s"] = round(time.perf_counter() - started, 1)
        paths[TEACHER] = teacher
        report["size_mib"] = {name: size_mib(path) for name, path in paths.items()}
        for height, width in args.size or INPUT_SIZES:
            size = f"{width}x{height}"  # the results' key, as people read sizes: W x H
            row = {}
            for name in (*VARIANTS, TEACHER):
                kind = "torch" if name in ("torch-fp32", TEACHER) else "onnx"
                row[name] = run_child(kind, paths[name], width, height, args.repeats, args.threads)
                print(f"{size:10s} {name}: {row[name]['median_s']:.3f} s, peak {row[name]['peak_mib']:.0f} MiB", flush=True)
            row["parity"] = parity(paths, width, height, args.threads)
            row["speedup_vs_teacher"] = {name: round(row[TEACHER]["median_s"] / row[name]["median_s"], 2) for name in VARIANTS}
            report["results"][size] = row
            write_json(out, report)  # what is measured is kept, should a later section fail
        if args.student_dir:
            report["target_miou"] = target_miou(Path(args.student_dir), args.val_dataset, calibration, work, args.threads)
    write_json(out, report)
    print(markdown(report))


if __name__ == "__main__":
    main()
