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
    save_file({k: v.contiguous() for k, v in duda.student.state_dict().items()}, out / f"student_rank{rank}.safetensors")
    save_file({k: v.contiguous() for k, v in duda.teacher.state_dict().items()}, out / f"teacher_rank{rank}.safetensors")
    save_file({k: v.contiguous() for k, v in duda.aux_student.state_dict().items()}, out / f"aux_student_rank{rank}.safetensors")
    info = {
        "world_size": trainer.args.world_size,
        "indices": seen,
        "metrics": metrics,
        "steps": trainer.state.global_step,
        "log_history": trainer.state.log_history,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
