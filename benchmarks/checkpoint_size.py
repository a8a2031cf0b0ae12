"""What one training checkpoint holds, by network, with and without the frozen networks (from the state-dict sizes).

Builds the run's networks on PyTorch's meta device (shapes only: no weights downloaded, no memory used) and sums
each state dict's bytes as `model.safetensors` stores them: every network the checkpoint kept before frozen networks
were left out (the students, the EMA teacher, the ImageNet encoder of the feature distance, the extra teachers), and
what it keeps now (`DudaModel.checkpoint_state_dict`). Adam's two moments per trained parameter
(`optimizer.safetensors`) are reported beside them; they do not change.

    python benchmarks/checkpoint_size.py                       # the paper recipes' pair: mit-b0 with mit-b5-daformer
    python benchmarks/checkpoint_size.py --aux_student mit-b5  # the SegFormer-head MiT-B5
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from duda_hf.networks.duda_model import DudaModel
from duda_hf.networks.loading import build_network
from duda_hf.networks.presets import mit_encoder

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def sizes(student: str, aux_student: str, extra_teachers: int) -> dict:
    """Bytes per network of a `duda` run with the feature distance (`--init imagenet`), on the meta device."""
    with torch.device("meta"):
        student_net, aux_net = build_network(student, "random"), build_network(aux_student, "random")
        encoder = copy.deepcopy(aux_net.base_model)
        teachers = [build_network(aux_student, "random") for _ in range(extra_teachers)]
    sources = {"imagenet_encoder": f"nvidia/{mit_encoder(aux_student)}"}
    sources.update({f"extra_teacher_{i}": f"org/teacher-{i}" for i in range(extra_teachers)})
    duda = DudaModel(student_net, aux_net, extra_teachers=teachers, imagenet_encoder=encoder, frozen_sources=sources)
    before = tensor_bytes(duda.state_dict().values())
    after = tensor_bytes(duda.checkpoint_state_dict().values())
    by_network = {
        "student": tensor_bytes(duda.student.state_dict().values()),
        "aux_student": tensor_bytes(duda.aux_student.state_dict().values()),
        "teacher": tensor_bytes(duda.teacher.state_dict().values()),
        "imagenet_encoder": tensor_bytes(encoder.state_dict().values()),
        "extra_teachers": tensor_bytes(duda.extra_teachers.state_dict().values()),
    }
    adam = 2 * tensor_bytes(p for p in duda.parameters() if p.requires_grad)
    return {
        "student": student,
        "aux_student": aux_student,
        "extra_teachers": extra_teachers,
        "model_safetensors_before_MiB": round(before / MIB, 1),
        "model_safetensors_after_MiB": round(after / MIB, 1),
        "saved_MiB": round((before - after) / MIB, 1),
        "by_network_MiB": {name: round(value / MIB, 1) for name, value in by_network.items()},
        "optimizer_safetensors_MiB": round(adam / MIB, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="mit-b0")
    parser.add_argument("--aux_student", default="mit-b5-daformer", help="An MiT preset (the feature distance needs one).")
    parser.add_argument("--extra_teachers", type=int, default=0, help="Frozen extra teachers of the auxiliary's architecture.")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "checkpoint_size.json"))
    args = parser.parse_args()
    if mit_encoder(args.aux_student) is None:
        parser.error(f"--aux_student {args.aux_student}: the feature distance's encoder needs an MiT preset (mit-b0..b5[-daformer])")
    result = sizes(args.student, args.aux_student, args.extra_teachers)
    print(
        f"{args.student} with {args.aux_student}: model.safetensors {result['model_safetensors_before_MiB']} MiB before, "
        f"{result['model_safetensors_after_MiB']} MiB now ({result['saved_MiB']} MiB of frozen networks left out); "
        f"optimizer.safetensors {result['optimizer_safetensors_MiB']} MiB"
    )
    print(json.dumps(result["by_network_MiB"]))
    output = Path(args.output)
    records = json.loads(output.read_text()) if output.is_file() else []
    records = [
        r for r in records if (r["student"], r["aux_student"], r["extra_teachers"]) != (args.student, args.aux_student, args.extra_teachers)
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps([*records, result], indent=2) + "\n")


if __name__ == "__main__":
    main()
