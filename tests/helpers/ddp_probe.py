"""Run by tests/test_ddp.py under `accelerate launch`: train, then save what this rank ended with and saw."""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.training_run import build_trainer


def main() -> None:
    trainer = build_trainer(*parse_args(sys.argv[1:]))
    dataset = trainer.train_dataset
    seen = []
    original = dataset.__getitem__

    def recording_getitem(index):
        seen.append(int(index))
        return original(index)

    dataset.__getitem__ = recording_getitem  # instance attribute: the DataLoader calls dataset[i] -> type's method
    type(dataset).__getitem__ = lambda self, index: recording_getitem(index)
    trainer.train()
    metrics = trainer.evaluate()
    rank = trainer.args.process_index
    out = Path(trainer.args.output_dir)
    duda = trainer.model
    networks = {"student": duda.student, "teacher": duda.teacher, "aux_student": duda.aux_student}
    for name, network in networks.items():
        if network is not None:  # `distill` has no EMA teacher and no auxiliary student
            save_file({k: v.contiguous() for k, v in network.state_dict().items()}, out / f"{name}_rank{rank}.safetensors")
    info = {
        "networks": [name for name, network in networks.items() if network is not None],
        "world_size": trainer.args.world_size,
        "indices": seen,
        "metrics": metrics,
        "steps": trainer.state.global_step,
        "log_history": trainer.state.log_history,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
