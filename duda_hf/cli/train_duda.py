"""Train DUDA (or a baseline) and export the student.

    duda-train --config configs/synthetic_cpu.yaml [--field value ...]
    accelerate launch -m duda_hf.cli.train_duda --config RECIPE.yaml [--field value ...]
    accelerate launch scripts/train_duda.py --config RECIPE.yaml [--field value ...]     # in a clone

Every field of DudaConfig, ModelArguments and DataArguments is a flag; flags override the recipe.
Writes Trainer checkpoints, `student/` (plain SegFormer) and `eval_results.json` to --output_dir.
"""

from __future__ import annotations

import logging
import sys

from duda_hf.cli.errors import program


@program
def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as transformers_logging

    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.training_run import run_training
    from duda_hf.evaluation.report import teacher_premise
    from duda_hf.training.console import scored_networks

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # transformers prints its records with its own handler and, where CI=true, hands them to the root logger as
    # well, whose handler above would print each a second time.
    transformers_logging.disable_propagation()
    model_args, data_args, config = parse_args(argv, description=__doc__)
    results = run_training(model_args, data_args, config)
    if config.process_index == 0:
        metrics = results["metrics"]
        line = f"target-validation mIoU ({metrics['student']['num_images']} images): "
        line += f"student {100 * metrics['student']['mIoU']:.2f}"
        for name in scored_networks(metrics):
            if name != "student":
                line += f", {name} {100 * metrics[name]['mIoU']:.2f}"
        print(line)
        premise = teacher_premise(results)
        if premise:
            print(f"note: {premise}")
        print(f"student exported to {config.output_dir}/student")
    return 0


if __name__ == "__main__":
    sys.exit(main())
