"""Import a DAFormer, HRDA or MIC checkpoint (an mmseg `.pth` file) as a transformers model folder.

Writes OUT/ with config.json (DaformerForSemanticSegmentation, the 19 Cityscapes labels), model.safetensors, the
model's code (modeling_daformer.py, configuration_daformer.py: transformers alone loads the folder with
trust_remote_code=True), preprocessor_config.json (resize to --eval_size, ImageNet normalisation, as those
repositories test) and a README.md saying where it came from. The folder is a network like any other for duda-hf:
--aux_student, --extra_teachers, --teacher (--method distill), duda-evaluate --model, duda-export-onnx, duda-push --keep_card, the Space.

--network student (the default) takes the network under `model.` of a training checkpoint, which those repositories
evaluate and publish (their tools/test.py loads it); --network teacher takes its EMA teacher (`ema_model.`). A
published checkpoint (keys without a prefix) is the network itself. `imnet_model.` (the feature distance's frozen
ImageNet network) is never imported. The file is read with torch.load(weights_only=True); every tensor key is mapped
or the import fails naming the ones that are not. The MiT size is read from the weights (--encoder checks it).

An HRDA or MIC(HRDA) checkpoint is refused while duda-hf has no HRDA inference, unless --drop_scale_attention:
then its head path is imported alone and the network predicts at one scale.

Example (`duda-import-checkpoint` is the same as `python scripts/import_checkpoint.py` in a clone):
    duda-import-checkpoint work_dirs/gta2cs_daformer/latest.pth --out imported/daformer-gta2cs
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

from duda_hf.cli.errors import program

CARD = """---
library_name: transformers
pipeline_tag: image-segmentation
tags:
- semantic-segmentation
- daformer
- domain-adaptation
---

# {name}

A `DaformerForSemanticSegmentation` ({encoder} encoder with the DAFormer decode head, 19 Cityscapes classes) imported
by duda-hf from `{source}` (sha256 `{sha256}`): the {what}.{hrda}

It was not re-evaluated by the import: its numbers are those of the run that trained it. Load it with
`AutoModelForSemanticSegmentation.from_pretrained(FOLDER, trust_remote_code=True)`, or without the flag where duda_hf
is imported; the image processor resizes to {eval_size} (W x H) and normalises with ImageNet's mean and std.
"""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@program
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the .pth file (a training checkpoint, or a published network)")
    parser.add_argument("--out", required=True, help="the model folder to write (must not exist, or be empty)")
    parser.add_argument(
        "--network", choices=("student", "teacher"), default="student", help="model. (default) or its EMA teacher ema_model."
    )
    parser.add_argument("--encoder", default=None, help="the MiT size (mit-b0 .. mit-b5); read from the weights when left out")
    parser.add_argument(
        "--aspp_dilations",
        type=int,
        nargs="+",
        default=None,
        help="the ASPP's dilations (not stored in the file; default DAFormer's 1 6 12 18)",
    )
    parser.add_argument("--drop_scale_attention", action="store_true", help="HRDA: import the head path alone (predicts at one scale)")
    parser.add_argument(
        "--hrda_detail_crop",
        type=int,
        nargs=2,
        default=(512, 512),
        metavar=("H", "W"),
        help="HRDA: the detail crop its inference slides over the image, H W, height first (not in the file; default HRDA's 512 512)",
    )
    parser.add_argument(
        "--eval_size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="the image processor's size, H W, height first (default 512 1024; an HRDA network with its scale attention: 1024 2048, "
        "HRDA's)",
    )
    args = parser.parse_args(argv)

    from duda_hf.export.network import export_network
    from duda_hf.networks.mmseg_import import DAFORMER_DILATIONS, CheckpointImportError, convert_checkpoint, load_imported, read_checkpoint

    source, out = Path(args.checkpoint), Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointImportError(f"--out '{out}' already exists and is not an empty folder; pass a new folder (nothing was written)")
    state = read_checkpoint(source)
    imported = convert_checkpoint(
        state,
        args.network,
        encoder=args.encoder,
        aspp_dilations=tuple(args.aspp_dilations or DAFORMER_DILATIONS),
        drop_scale_attention=args.drop_scale_attention,
        hrda_detail_crop=tuple(args.hrda_detail_crop),
    )
    fused = imported.config.hrda_scales is not None  # HRDA with its scale attention: HRDA's full-resolution inference
    args.eval_size = tuple(args.eval_size or ((1024, 2048) if fused else (512, 1024)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        model = load_imported(imported, Path(work) / "mapped")
        staged = export_network(model, Path(work) / "folder", eval_size_hw=tuple(args.eval_size))
        what = {
            "student": "trained network (`model.`) of a training checkpoint",
            "teacher": "EMA teacher (`ema_model.`) of a training checkpoint",
            "published": "network of a published checkpoint",
        }[imported.network]
        if fused:
            crop = "x".join(map(str, imported.config.hrda_detail_crop[::-1]))
            hrda = (
                " It is an HRDA network with its scale attention: it predicts as HRDA does at inference, the image at half "
                f"resolution for the context and in overlapping {crop} (W x H) detail windows at full resolution, fused by "
                "the scale attention."
            )
        elif imported.hrda:
            hrda = (
                " It comes from an HRDA checkpoint without its scale attention: it predicts at one scale, not with HRDA's "
                "fused multi-resolution output."
            )
        else:
            hrda = ""
        card = CARD.format(
            name=out.name,
            encoder=imported.encoder.upper().replace("MIT-", "MiT-"),
            source=source.name,
            sha256=_sha256(source),
            what=what,
            hrda=hrda,
            eval_size=f"{args.eval_size[1]}x{args.eval_size[0]}",
        )
        (staged / "README.md").write_text(card, encoding="utf-8")
        os.replace(staged, out)  # a rename (onto nothing, or an empty folder): the folder appears whole
    left = ", ".join(f"{prefix} ({count} tensors)" for prefix, count in imported.left_out.items())
    print(
        f"imported the {imported.network} network of {source} ({imported.encoder} with the DAFormer head"
        f"{', HRDA fused inference' if fused else ', HRDA head path only' if imported.hrda else ''}) into {out}"
        + (f"; left out: {left}" if left else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
