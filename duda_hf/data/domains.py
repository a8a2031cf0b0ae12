"""Load a domain as a `datasets.Dataset` with columns `image` and (where labelled) `label` (docs/design.md, "Data contract")."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import datasets
import numpy as np
from huggingface_hub import constants, is_offline_mode
from PIL import Image

from duda_hf.data.errors import DomainError
from duda_hf.data.labels import CITYSCAPES_ID_TO_TRAINID, apply_lookup, colors_to_trainids
from duda_hf.data.native import load_native
from duda_hf.data.remote import hub_reachable, offline_for_now
from duda_hf.data.splits import other_split_name
from duda_hf.data.synthetic import SYNTHETIC_BENCHMARKS

__all__ = ["LABEL_TYPES", "DomainError", "LabelConverter", "load_domain"]  # DomainError lives in .errors, also named here


def load_domain(
    spec: str,
    split: str = "train",
    *,
    with_labels: bool = True,
    image_column: str = "image",
    label_column: str = "label",
    role: str = "dataset",
    format: str | None = None,
    conditions: tuple[str, ...] = (),
    label_type: str = "trainid",
) -> datasets.Dataset:
    """Open a domain from a `save_to_disk` folder, a Hub dataset id, or a native dataset folder.

    Args:
        spec: folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or a Hub dataset id.
        split: the split to take from a DatasetDict folder or a Hub dataset.
        with_labels: keep the label column (False for the target training set, whatever it holds).
        image_column, label_column: column names in the stored dataset, renamed to `image` / `label`.
        role: the flag the spec came from, for error messages (e.g. '--source_dataset').
        format: a native layout (`gta5`, `synthia`, `cityscapes`, `acdc`, `darkzurich`): `spec` is then the
            dataset's own top folder, read in place (see `duda_hf.data.native`).
        conditions: ACDC / Dark Zurich conditions to include (empty: all, or Dark Zurich's night).
        label_type: how a stored or Hub dataset encodes labels: `trainid`, `labelid` (Cityscapes ids) or `color`
            (Cityscapes palette). Native formats know their own encoding.

    Returns:
        A Dataset with `image` and, if `with_labels`, `label`.
    """
    if spec is None:
        raise DomainError(f"{role} is required: a save_to_disk folder, a Hub dataset id, or a native folder with its format")
    if format:
        return load_native(spec, format, split, conditions=tuple(conditions), with_labels=with_labels)
    if label_type not in LABEL_TYPES:
        raise DomainError(f"{role}: unknown label type '{label_type}'; choose from {list(LABEL_TYPES)}")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DomainError(f"{role} '{spec}' is a file; expected a folder written by datasets' save_to_disk")
        if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            raise DomainError(
                f"{role} '{spec}' is a folder but not a `datasets` save_to_disk folder (no dataset_info.json or "
                "dataset_dict.json). If it is a native dataset folder, pass its --*_format or convert it with `duda-prepare-data`; "
                "otherwise write it with Dataset.save_to_disk."
            )
        states = [state for state in (path / "state.json", *sorted(path.glob("*/state.json"))) if state.is_file()]
        empty = [str(state.parent.relative_to(path)) for state in states if not json.loads(state.read_text()).get("_data_files")]
        if empty == ["."]:  # datasets cannot open a folder saved from an empty dataset (IndexError inside load_from_disk)
            raise DomainError(f"{role} '{spec}' is empty: 0 rows. Point it at a dataset with images, or build it again.")
        if empty:
            raise DomainError(
                f"{role} '{spec}' has empty splits {empty} (0 rows), which `datasets` cannot open: save the "
                "DatasetDict without them, or build it again."
            )
        loaded = datasets.load_from_disk(str(path))
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise DomainError(f"{role} '{spec}' does not exist. {_build_hint(spec)}")
    else:
        # no network (and offline mode not set): datasets would retry for half a minute; ask its cache instead
        unreachable = not is_offline_mode() and not hub_reachable()
        try:
            with offline_for_now() if unreachable else contextlib.nullcontext():
                loaded = datasets.load_dataset(spec, split=split)
        except Exception as error:  # datasets raises many types (ConnectionError, FileNotFoundError, DatasetNotFoundError)
            if unreachable:
                raise DomainError(
                    f"{role} '{spec}' is not a local folder, and as a Hub dataset id it cannot be downloaded: the Hub "
                    f"({constants.ENDPOINT}) is unreachable and the dataset is not in the cache. {_build_hint(spec)}"
                ) from error
            raise DomainError(
                f"{role} '{spec}' is neither a local folder nor a loadable Hub dataset ({type(error).__name__}: {error}). "
                f"Offline, pass a local save_to_disk folder instead. {_build_hint(spec)}"
            ) from error
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded and other_split_name(split) in loaded:  # `val` for `validation` and back
            split = other_split_name(split)
        if split not in loaded:
            raise DomainError(f"{role} '{spec}' has splits {sorted(loaded)}, not '{split}'; pick one with the matching --*_split flag")
        loaded = loaded[split]
    if len(loaded) == 0:
        raise DomainError(f"{role} '{spec}' (split '{split}') is empty: 0 rows. Point it at a dataset with images, or build it again.")
    dataset = _select_columns(loaded, spec, role, with_labels, image_column, label_column)
    if with_labels and label_type != "trainid":
        dataset = dataset.with_transform(LabelConverter(label_type, f"{role} '{spec}'"))
    return dataset


def _build_hint(spec: str) -> str:
    """The way forward for a folder that is not there: the synthetic benchmark's folders are built by one command."""
    top = Path(spec).parts[0] if Path(spec).parts else spec
    for folder, flags in SYNTHETIC_BENCHMARKS.values():
        if top == folder:
            return f"If it is the synthetic benchmark, build it first: python scripts/make_synthetic.py --out {' '.join([folder, *flags])}"
    return "If it is meant to be a local folder, check the path, or build the data first (docs/datasets.md)."


LABEL_TYPES = ("trainid", "labelid", "color")


class LabelConverter:
    """`datasets` transform turning Cityscapes label ids or palette colours into trainIds on access. Picklable."""

    def __init__(self, label_type: str, where: str):
        self.label_type = label_type
        self.where = where

    def __call__(self, batch: dict) -> dict:
        if "label" in batch:
            batch["label"] = [Image.fromarray(self.convert(label)) for label in batch["label"]]
        return batch

    def convert(self, label) -> np.ndarray:
        array = np.asarray(label)
        if self.label_type == "color":
            if array.ndim != 3:
                raise DomainError(f"{self.where}: --*_label_type color needs RGB labels, got shape {array.shape}")
            train_ids, bad = colors_to_trainids(array)
            what = "colours outside the Cityscapes palette"
        else:
            if array.ndim != 2:
                raise DomainError(f"{self.where}: --*_label_type labelid needs single-channel labels, got shape {array.shape}")
            train_ids, bad = apply_lookup(array, CITYSCAPES_ID_TO_TRAINID)
            what = "values that are not Cityscapes label ids (0..33)"
        if len(bad):
            raise DomainError(f"{self.where}: labels hold {what}: {bad[:8].tolist()}. Check --*_label_type.")
        return train_ids


def _select_columns(
    dataset: datasets.Dataset, spec: str, role: str, with_labels: bool, image_column: str, label_column: str
) -> datasets.Dataset:
    wanted = {image_column: "image"}
    if with_labels:
        wanted[label_column] = "label"
    missing = [column for column in wanted if column not in dataset.column_names]
    if missing:
        raise DomainError(
            f"{role} '{spec}' has columns {dataset.column_names} but lacks {missing}; "
            "name the right ones with --image_column / --label_column"
        )
    dataset = dataset.select_columns(list(wanted))
    renames = {old: new for old, new in wanted.items() if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    for column in wanted.values():
        if not isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image())
    return dataset
