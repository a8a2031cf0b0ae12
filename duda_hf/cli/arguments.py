"""The command line's arguments: `ModelArguments`, `DataArguments` and `DudaConfig` from a YAML recipe and flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from duda_hf.cli.recipe import RecipeError, typed_recipe
from duda_hf.method.config import DudaConfig, check_flag, flag_help


@dataclass
class ModelArguments:
    """Which networks to build (docs/method.md, "The networks")."""

    student: str = field(
        default="mit-b0",
        metadata=flag_help(
            "Deployed student: a preset (mit-b0..mit-b5 and tiny, tiny-wide with SegFormer's head; the same with "
            "-daformer for DAFormer's head; mobilenetv2-deeplabv3-tiny, mobilevitv2-tiny), a Hub id, a local model folder "
            "(an imported DAFormer/HRDA/MIC checkpoint too) or CHECKPOINT_DIR@role."
        ),
    )
    aux_student: str = field(
        default="mit-b5-daformer",
        metadata=flag_help(
            "Auxiliary student whose EMA is the teacher (method=duda); same choices as --student. The default is DAFormer's "
            "network (MiT-B5 with the DAFormer head), as in DUDA."
        ),
    )
    init: str = field(
        default="imagenet",
        metadata=flag_help(
            "Initialisation of mit-bN students: 'imagenet' (encoder from the Hub checkpoint nvidia/mit-bN) or 'random' (no download).",
            choices=["imagenet", "random"],
        ),
    )

    def __post_init__(self):
        check_flag(self.init in ("imagenet", "random"), "ModelArguments.init", "'imagenet' or 'random'", self.init)


@dataclass
class DataArguments:
    """Where the domains come from (docs/design.md, "Data contract") and how they are cropped."""

    source_dataset: str | None = field(default=None, metadata=flag_help("Labelled source domain: Hub dataset id or save_to_disk folder."))
    target_dataset: str | None = field(default=None, metadata=flag_help("Unlabelled target training domain (labels, if any, are dropped)."))
    target_eval_dataset: str | None = field(default=None, metadata=flag_help("Labelled target validation domain for mIoU."))
    source_split: str = field(default="train", metadata=flag_help("Split of the source dataset (Hub ids and DatasetDict folders)."))
    target_split: str = field(default="train", metadata=flag_help("Split of the target dataset."))
    target_eval_split: str = field(default="validation", metadata=flag_help("Split of the target validation dataset."))
    source_format: str | None = field(
        default=None,
        metadata=flag_help(
            "Native layout of --source_dataset, read in place: gta5, synthia, cityscapes, acdc, darkzurich. Empty: a save_to_disk folder or Hub id."
        ),
    )
    target_format: str | None = field(default=None, metadata=flag_help("Native layout of --target_dataset (see --source_format)."))
    target_eval_format: str | None = field(
        default=None, metadata=flag_help("Native layout of --target_eval_dataset (see --source_format).")
    )
    source_conditions: list[str] = field(
        default_factory=list, metadata=flag_help("ACDC / Dark Zurich conditions of the source (empty: all; Dark Zurich: night).")
    )
    target_conditions: list[str] = field(
        default_factory=list, metadata=flag_help("ACDC (fog night rain snow) / Dark Zurich (day twilight night) conditions of the target.")
    )
    target_eval_conditions: list[str] = field(
        default_factory=list, metadata=flag_help("ACDC / Dark Zurich conditions of the target validation set.")
    )
    source_label_type: str = field(
        default="trainid",
        metadata=flag_help("Label encoding of a stored or Hub source: trainid, labelid (Cityscapes ids) or color (Cityscapes palette)."),
    )
    target_eval_label_type: str = field(
        default="trainid", metadata=flag_help("Label encoding of a stored or Hub target validation set (see --source_label_type).")
    )
    image_column: str = field(default="image", metadata=flag_help("Image column name in the datasets."))
    label_column: str = field(default="label", metadata=flag_help("Label column name (Cityscapes trainIds, 255 = ignore)."))
    # Sizes: every size flag is H W, height first (as DAFormer's crop_size, torch and transformers' {"height", "width"});
    # the `*_hw` properties below give them to the library as (height, width).
    crop_size: list[int] = field(
        default_factory=lambda: [512, 512], metadata=flag_help("Training crop, H W, height first (one value: a square). DAFormer: 512 512.")
    )
    source_resize: list[int] = field(
        default_factory=list,
        metadata=flag_help("Resize source images before cropping to H W, height first (GTA5: 720 1280). Empty: keep size."),
    )
    target_resize: list[int] = field(
        default_factory=list,
        metadata=flag_help("Resize target images before cropping to H W, height first (Cityscapes: 512 1024). Empty: keep size."),
    )
    eval_resize: list[int] = field(
        default_factory=list,
        metadata=flag_help(
            "Evaluation input size, H W, height first; logits are upsampled to label size (Cityscapes: 512 1024). Empty: native size."
        ),
    )
    crop_cat_max_ratio: float = field(
        default=0.75,
        metadata=flag_help("Source crops are retried (up to 10 times) while one class covers more than this share. DAFormer: 0.75."),
    )
    eval_synthia_subsets: bool = field(
        default=False,
        metadata=flag_help("Also report mIoU16 and mIoU13 (SYNTHIA -> Cityscapes); on by itself with --source_format synthia."),
    )
    max_eval_samples: int | None = field(default=None, metadata=flag_help("Evaluate on the first N target validation images only."))

    def __post_init__(self):
        check_flag(len(self.crop_size) in (1, 2), "DataArguments.crop_size", "one or two integers (H W, height first)", self.crop_size)
        if len(self.crop_size) == 1:
            self.crop_size = [self.crop_size[0]] * 2
        check_flag(0 < self.crop_cat_max_ratio <= 1, "DataArguments.crop_cat_max_ratio", "in (0, 1]", self.crop_cat_max_ratio)
        from duda_hf.data.domains import LABEL_TYPES
        from duda_hf.data.native import FORMATS

        for name in ("source_format", "target_format", "target_eval_format"):
            check_flag(
                getattr(self, name) in (None, "", *FORMATS),
                f"DataArguments.{name}",
                f"empty or one of {sorted(FORMATS)}",
                getattr(self, name),
            )
        for name in ("source_label_type", "target_eval_label_type"):
            check_flag(getattr(self, name) in LABEL_TYPES, f"DataArguments.{name}", f"one of {list(LABEL_TYPES)}", getattr(self, name))
        for name in ("source_resize", "target_resize", "eval_resize"):
            value = getattr(self, name)
            check_flag(
                len(value) in (0, 2) and all(v > 0 for v in value),
                f"DataArguments.{name}",
                "empty or two positive integers (H W, height first)",
                value,
            )

    # The flags' sizes as the library takes them: (height, width), or None for "keep the images' size".
    @property
    def crop_size_hw(self) -> tuple[int, int]:
        """`--crop_size H W` as (height, width)."""
        height, width = self.crop_size
        return height, width

    @property
    def source_resize_hw(self) -> tuple[int, int] | None:
        """`--source_resize H W` as (height, width); empty: None."""
        return _size_hw(self.source_resize)

    @property
    def target_resize_hw(self) -> tuple[int, int] | None:
        """`--target_resize H W` as (height, width); empty: None."""
        return _size_hw(self.target_resize)

    @property
    def eval_size_hw(self) -> tuple[int, int] | None:
        """`--eval_resize H W` as (height, width); empty: None."""
        return _size_hw(self.eval_resize)


def _size_hw(value: list[int]) -> tuple[int, int] | None:
    """A resize flag's `H W` as (height, width); empty: None."""
    if not value:
        return None
    height, width = value
    return height, width


ARGUMENT_CLASSES = (ModelArguments, DataArguments, DudaConfig)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written (its examples keep their lines), every flag with its default."""


BASE_KEY = "base"  # a recipe's `base: OTHER.yaml` (beside it): the other recipe's flags, which this one overrides


def load_recipe(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML recipe (and the recipe it names as `base`, recursively) and check that every key is a known flag."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe '{path}' does not exist (see configs/ for the shipped recipes)")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise RecipeError(f"recipe '{path}' must be a mapping of flag: value, got {type(recipe).__name__}")
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    unknown = sorted(set(recipe) - known - {BASE_KEY})
    if unknown:
        raise RecipeError(f"recipe '{path}' has unknown keys {unknown}; run `duda-train --help` for the flags")
    if BASE_KEY in recipe:
        base, seen = path.parent / str(recipe.pop(BASE_KEY)), (*_seen, path.resolve())
        if base.resolve() in seen:
            raise RecipeError(f"recipe '{path}': its base '{base}' leads back to itself; remove one of the `base:` lines")
        recipe = {**load_recipe(base, seen), **recipe}
    return recipe


def parse_args(argv: list[str] | None = None, description: str | None = None) -> tuple[ModelArguments, DataArguments, DudaConfig]:
    """Flags override the recipe given by `--config`; the recipe overrides the dataclass defaults.

    Args:
        description: text `--help` shows above the flags.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES, description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--config", default=None, help="YAML recipe (see configs/); command-line flags override it.")
    config_path = None
    if "--config" in argv:
        position = argv.index("--config")
        config_path = argv[position + 1]
    elif any(arg.startswith("--config=") for arg in argv):
        config_path = next(arg for arg in argv if arg.startswith("--config=")).split("=", 1)[1]
    if config_path:
        parser.set_defaults(**typed_recipe(load_recipe(config_path), parser, config_path))
    model_args, data_args, config, _ = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, config
