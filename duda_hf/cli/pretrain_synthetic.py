"""Pretrain the synthetic benchmark's networks on a labelled pretraining domain (cached): the CPU analogue of ImageNet.

    duda-pretrain-synthetic [--out pretrained_synthetic] [--networks tiny tiny-wide] [--steps 8000]
    python scripts/pretrain_synthetic.py ...                                                  # in a clone

In the paper both networks start from ImageNet weights, of which the large MiT-B5 makes far more than the
MiT-B0. Here each network is trained the same way (same data, steps, batch and learning rate) on the
pretraining domain: the benchmark's street layouts with every object in a random colour, texture and
lighting, so that only shape and context tell the classes apart (docs/reproducibility.md). No target image
or label is used. Each network is written as a plain SegFormer folder, `OUT/NAME/`, for `--student`,
`--aux_student` or `--extra_teachers`, with `pretraining.json` (the settings and its mIoU on the pretraining
domain's validation split). A folder whose settings match is reused as it is; an interrupted run (Ctrl-C, a
preemption, a crash) continues from its last checkpoint when called again with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from duda_hf.cli.errors import program


def pretrain(name: str, data: dict[str, str], out: Path, steps: int, seed: int, save_every: int = 1000) -> dict:
    """Train preset `name` on the pretraining domain (source-only) and write it to `out/name`; return its record.

    The run checkpoints every `save_every` steps (and on SIGTERM/SIGINT) under `out/.runs/name`; a later call with
    the same settings continues from its newest checkpoint, one with other settings starts again.
    """
    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.training_run import run_training
    from duda_hf.jsonio import write_json

    settings = {"network": name, "steps": steps, "seed": seed, "batch_size": 4, "crop_size": 128, "learning_rate": 6e-4}
    target = out / name
    record_path = target / "pretraining.json"
    if record_path.is_file():
        cached = json.loads(record_path.read_text())
        if cached.get("settings") == settings:
            print(f"{name}: reusing {target}")
            return cached
    run_dir = out / ".runs" / name
    settings_file = run_dir / "settings.json"
    resume = settings_file.is_file() and json.loads(settings_file.read_text()) == settings
    if resume:
        print(f"{name}: continuing the interrupted run in {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        write_json(settings_file, settings)
    flags = [
        "--method",
        "source_only",
        "--student",
        name,
        "--init",
        "random",
        "--source_dataset",
        data["pretrain"],
        "--target_dataset",
        data["pretrain"],
        "--target_eval_dataset",
        data["pretrain_val"],
        "--crop_size",
        "128",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        str(steps),
        "--learning_rate",
        str(settings["learning_rate"]),
        "--warmup_steps",
        "100",
        # the pretraining stands in for ImageNet's, not DAFormer's recipe: the schedule and weight decay it was made with
        "--lr_schedule",
        "trainer",
        "--weight_decay_exempt",
        "norms_and_biases",
        "--rcs_min_pixels",
        "150",
        "--pseudo_label_ignore_top",
        "0",
        "--pseudo_label_ignore_bottom",
        "0",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "steps",
        "--save_steps",
        str(save_every),
        "--save_total_limit",
        "2",
        "--logging_steps",
        "200",
        "--report_to",
        "none",
        "--seed",
        str(seed),
        "--output_dir",
        str(run_dir),
        *(["--resume_from_checkpoint", "last"] if resume else []),
    ]
    results = run_training(*parse_args(flags))
    record = {
        "settings": settings,
        "pretrain_val_mIoU": round(100 * results["metrics"]["student"]["mIoU"], 2),
        "seconds": results["seconds"],
    }
    write_json(run_dir / "student" / "pretraining.json", record)
    # the finished folder appears in one rename (run_dir is under out/): a cached folder is always complete
    shutil.rmtree(target, ignore_errors=True)
    os.replace(run_dir / "student", target)
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"{name}: pretrain-domain mIoU {record['pretrain_val_mIoU']:.2f} after {steps} steps ({record['seconds']:.0f} s) -> {target}")
    return record


@program
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="pretrained_synthetic", help="Folder of the pretrained networks (default: %(default)s).")
    parser.add_argument("--data", default="data_synthetic_pretrain", help="Folder of the pretraining domain (built if missing).")
    parser.add_argument("--networks", nargs="+", default=["tiny", "tiny-wide"], help="Presets to pretrain (default: %(default)s).")
    parser.add_argument("--steps", type=int, default=8000, help="Training steps per network, batch 4 (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0, help="Training seed (default: %(default)s).")
    parser.add_argument(
        "--save_every", type=int, default=1000, help="Checkpoint every N steps; an interrupted run resumes (default: %(default)s)."
    )
    parser.add_argument("--num_train", type=int, default=1200, help="Pretraining images, when the domain is built (default: %(default)s).")
    parser.add_argument("--num_val", type=int, default=100, help="Its validation images (default: %(default)s).")
    args = parser.parse_args(argv)
    from duda_hf.data.synthetic import build_pretraining_domain

    # reused when --data holds a domain built with these settings, else built (again) with them
    data = build_pretraining_domain(args.data, num_train=args.num_train, num_val=args.num_val)
    out = Path(args.out)
    for name in args.networks:
        pretrain(name, data, out, args.steps, args.seed, args.save_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
