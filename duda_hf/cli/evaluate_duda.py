"""Evaluate SegFormer models (an exported student, a teacher, any Hub id) on a labelled dataset, streaming.

Writes to --output_dir: `eval_results.json` (`settings`: the models, the dataset and how it was scored; `metrics`
per model: mIoU, per-class IoU and accuracy, mIoU16/13 for SYNTHIA sources, image count, confusion matrix; the
seconds; duda_hf/evaluation/results_file.py), `report.md` (the per-class table) and `per_class_iou.png` /
`confusion_matrix.png`; prints the table. `--compare` scores a second model on the same pass and puts the two
side by side (student vs teacher: what distillation kept). Runs under `accelerate launch` too (the images are
split across processes and the confusion matrices summed). Images go through the networks `--batch_size` at a
time, decoded by `--num_workers` DataLoader workers; a progress bar counts them with the time left.

Examples (`duda-evaluate` is the same as `python scripts/evaluate_duda.py` in a clone):
    duda-evaluate --model outputs/run/student --dataset data/cityscapes --split val
    duda-evaluate --model outputs/run/student --compare outputs/run/teacher \\
        --dataset /data/cityscapes --format cityscapes --split val --eval_size 512 1024 --batch_size 8 --num_workers 4
    duda-evaluate --model org/duda-mitb0-gta2cs --dataset /data/acdc --format acdc --split val --mode slide
    accelerate launch -m duda_hf.cli.evaluate_duda --model ... --dataset ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from duda_hf.cli.errors import program


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="SegFormer folder or Hub id (19 Cityscapes classes)")
    parser.add_argument("--compare", help="a second model scored in the same pass (e.g. the teacher)")
    parser.add_argument("--name", default=None, help="label of --model in the report (default: its folder name)")
    parser.add_argument("--compare_name", default=None, help="label of --compare in the report")
    parser.add_argument("--dataset", required=True, help="save_to_disk folder, Hub dataset id, or native folder with --format")
    parser.add_argument("--split", default="validation", help="split (native folders: val; `validation` also works)")
    parser.add_argument("--format", default=None, help="native layout: gta5, synthia, cityscapes, acdc, darkzurich")
    parser.add_argument("--conditions", nargs="*", default=[], help="ACDC / Dark Zurich conditions")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--label_type", default="trainid", help="trainid, labelid or color (stored and Hub datasets)")
    parser.add_argument(
        "--eval_size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="inference size, H W, height first (Cityscapes: 512 1024; logits upsampled to the label size); default: the "
        "model's image processor size, or the native size",
    )
    parser.add_argument("--native_size", action="store_true", help="ignore the image processor's size: infer at the image size")
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole", help="whole-image (DAFormer protocol) or sliding window")
    parser.add_argument("--window", nargs=2, type=int, default=[512, 512], metavar=("H", "W"), help="slide: window size, H W, height first")
    parser.add_argument("--stride", nargs=2, type=int, default=[341, 341], metavar=("H", "W"), help="slide: stride, H W, height first")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=4,
        help="images per forward pass, grouped by size (slide: max(4, N) windows a pass); lower it if memory runs out",
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="DataLoader workers decoding the images beside the forward passes; 0 decodes in the main process "
        "(default: min(4, CPU cores - 1) with a GPU; 0 on the CPU, where workers compete with the forward pass for the cores)",
    )
    parser.add_argument("--synthia_subsets", action="store_true", help="also report mIoU16 and mIoU13 (SYNTHIA -> Cityscapes)")
    parser.add_argument("--max_samples", type=int, default=None, help="score the first N images only")
    parser.add_argument(
        "--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto", help="autocast (auto: bf16 on GPU, fp32 on CPU)"
    )
    parser.add_argument("--output_dir", default=None, help="where the results go (default: eval_<model name>)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.num_workers is not None and args.num_workers < 0):
        parser.error(f"--batch_size must be at least 1 and --num_workers at least 0, got {args.batch_size} and {args.num_workers}")
    # every size flag is H W, as the library takes them
    args.eval_size_hw = tuple(args.eval_size) if args.eval_size else None
    args.window_hw, args.stride_hw = tuple(args.window), tuple(args.stride)
    return args


def load_model(name_or_path: str, role: str = "--model"):
    """The network (any segmentation family, normalised as its image processor says) and its evaluation size
    `(height, width)` from its image processor, if it has one (else the native size)."""
    from duda_hf.networks.checks import check_model_folder
    from duda_hf.networks.loading import adopt_input_normalization, load_image_processor, load_pretrained_network

    if Path(name_or_path).is_dir():
        check_model_folder(name_or_path, role)
    model = load_pretrained_network(name_or_path, hint="pass a local folder (e.g. the run's student/) instead")
    model = adopt_input_normalization(model, name_or_path)
    processor = load_image_processor(name_or_path)
    size = getattr(processor, "size", None)
    fixed = processor is not None and processor.do_resize and size is not None and size.height and size.width
    size_hw = (size.height, size.width) if fixed else None
    return model, size_hw


def _wxh(size_hw: tuple[int, int]) -> str:
    return f"{size_hw[1]}x{size_hw[0]}"


def pixels_line(metrics: dict) -> str:
    """How many label pixels were scored and how many ignored: a dataset whose labels are mostly ignore shows here."""
    scored, ignored = metrics["pixels_scored"], metrics["pixels_ignored"]
    share = f" ({100 * scored / (scored + ignored):.1f}%)" if scored + ignored else ""
    return f"{scored:,} scored{share}, {ignored:,} ignored (label 255)"


@program
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from accelerate import PartialState

    from duda_hf.data.checks import check_pairs, check_resize
    from duda_hf.data.domains import load_domain
    from duda_hf.data.labels import CITYSCAPES_CLASSES
    from duda_hf.data.rcs import class_pixel_counts
    from duda_hf.evaluation.confusion import SYNTHIA_SUBSETS
    from duda_hf.evaluation.inference import evaluate_networks
    from duda_hf.evaluation.report import markdown_report, plot_confusion, plot_per_class_iou
    from duda_hf.evaluation.results_file import evaluation_results
    from duda_hf.jsonio import write_json

    state = PartialState()
    dataset = load_domain(
        args.dataset,
        args.split,
        with_labels=True,
        image_column=args.image_column,
        label_column=args.label_column,
        role="--dataset",
        format=args.format,
        conditions=tuple(args.conditions),
        label_type=args.label_type,
    )
    if args.max_samples:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    # before any inference, as training does: label values (cached), image/label sizes (file headers) and an --eval_size
    # that keeps the images' orientation
    with state.main_process_first():
        class_pixel_counts(dataset, "--dataset")
    check_resize("--eval_size", args.eval_size_hw, check_pairs(dataset, "--dataset"), "--dataset")
    models = {args.name or Path(args.model.rstrip("/")).name: load_model(args.model)}
    if args.compare:
        compare_name = args.compare_name or Path(args.compare.rstrip("/")).name
        if compare_name in models:
            compare_name += " (compare)"
        models[compare_name] = load_model(args.compare, "--compare")
    for name, (model, *_rest) in models.items():
        if model.config.num_labels != len(CITYSCAPES_CLASSES):
            print(
                f"error: model '{name}' predicts {model.config.num_labels} classes; this evaluates the 19 Cityscapes trainIds",
                file=sys.stderr,
            )
            return 2
    _, model_size_hw = next(iter(models.values()))
    size_hw = args.eval_size_hw or (None if args.native_size else model_size_hw)
    device = state.device
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else None
    if args.num_workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        args.num_workers = min(4, max(cores - 1, 0)) if device.type == "cuda" else 0
    networks = {name: model.to(device).eval() for name, (model, *_rest) in models.items()}
    subsets = SYNTHIA_SUBSETS if args.synthia_subsets else None

    started = time.monotonic()
    matrices = evaluate_networks(
        networks,
        dataset,
        device,
        input_size_hw=size_hw,
        mode=args.mode,
        window_hw=args.window_hw,
        stride_hw=args.stride_hw,
        autocast_dtype=dtype,
        process_index=state.process_index,
        world_size=state.num_processes,
        progress=state.is_main_process,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    seconds = time.monotonic() - started
    if not state.is_main_process:
        return 0

    results = {}
    for name, matrix in matrices.items():
        metrics = matrix.compute(class_subsets=subsets)
        metrics.update(num_images=len(dataset), confusion_matrix=matrix.matrix.cpu().tolist())
        results[name] = metrics
    details = {
        "dataset": f"{args.dataset} ({args.format or 'datasets'}, split {args.split}{', ' + ' '.join(args.conditions) if args.conditions else ''})",
        "images": str(len(dataset)),
        "pixels": pixels_line(next(iter(results.values()))),
        # sizes as people read them: width x height
        "inference": f"{args.mode}, input {_wxh(size_hw) if size_hw else 'native size'}"
        + (f", window {_wxh(args.window_hw)} stride {_wxh(args.stride_hw)}" if args.mode == "slide" else ""),
        "seconds": f"{seconds:.1f} on {device} x{state.num_processes} (batch {args.batch_size}, {args.num_workers} workers)",
    }
    out = Path(args.output_dir or f"eval_{next(iter(models)).replace(' ', '_')}")
    out.mkdir(parents=True, exist_ok=True)
    # eval_results.json (schema: duda_hf/evaluation/results_file.py): what was evaluated and how, apart from the numbers
    settings = {
        "models": dict(zip(models, [args.model, args.compare][: len(models)], strict=True)),  # report name -> folder or Hub id
        "dataset": args.dataset,
        "format": args.format,
        "split": args.split,
        "conditions": list(args.conditions),
        "label_type": args.label_type,
        "mode": args.mode,
        # H W, as --eval_size, --window and --stride take them (before schema 3, eval_size was W H: results_file.py)
        "eval_size": list(size_hw) if size_hw else None,
        "window": list(args.window_hw) if args.mode == "slide" else None,
        "stride": list(args.stride_hw) if args.mode == "slide" else None,
        "dtype": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype],
        "num_images": len(dataset),
    }
    write_json(out / "eval_results.json", evaluation_results(settings, results, seconds=round(seconds, 2)))
    text = markdown_report(results, "Evaluation", details)
    (out / "report.md").write_text(text)
    plot_per_class_iou(results, out / "per_class_iou.png", f"Per-class IoU, {Path(args.dataset).name}")
    for number, (name, metrics) in enumerate(results.items()):
        suffix = "" if number == 0 else "_compare"
        plot_confusion(
            np.asarray(metrics["confusion_matrix"]), out / f"confusion_matrix{suffix}.png", f"{name}: confusion (row-normalised)"
        )
    print(text)
    print(f"written to {out}/ (eval_results.json, report.md, per_class_iou.png, confusion_matrix*.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
