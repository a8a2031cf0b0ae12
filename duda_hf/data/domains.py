"""Load a domain as a `datasets.Dataset` with columns `image` and (where labelled) `label` (DESIGN.md data contract)."""

from __future__ import annotations

from pathlib import Path

import datasets


class DomainError(ValueError):
    """A dataset argument that cannot be used, with what to do about it."""


def load_domain(
    spec: str,
    split: str = "train",
    with_labels: bool = True,
    image_column: str = "image",
    label_column: str = "label",
    role: str = "dataset",
) -> datasets.Dataset:
    """Open a domain from a `save_to_disk` folder or a Hub dataset id.

    Args:
        spec: folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or a Hub dataset id.
        split: the split to take from a DatasetDict folder or a Hub dataset.
        with_labels: keep the label column (False for the target training set, whatever it holds).
        image_column, label_column: column names in the stored dataset, renamed to `image` / `label`.
        role: the flag the spec came from, for error messages (e.g. '--source_dataset').

    Returns:
        A Dataset with `image` and, if `with_labels`, `label`.
    """
    if spec is None:
        raise DomainError(f"{role} is required: a save_to_disk folder or a Hub dataset id")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DomainError(f"{role} '{spec}' is a file; expected a folder written by datasets' save_to_disk")
        if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            raise DomainError(
                f"{role} '{spec}' is a folder but not a `datasets` save_to_disk folder (no dataset_info.json or "
                "dataset_dict.json). Convert it first (e.g. `python scripts/make_synthetic.py`, or Dataset.save_to_disk)."
            )
        loaded = datasets.load_from_disk(str(path))
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise DomainError(f"{role} '{spec}' does not exist. Check the path, or build the data first (see README).")
    else:
        try:
            loaded = datasets.load_dataset(spec, split=split)
        except Exception as error:  # datasets raises many types (ConnectionError, FileNotFoundError, DatasetNotFoundError)
            raise DomainError(
                f"{role} '{spec}' is neither a local folder nor a loadable Hub dataset ({type(error).__name__}: {error}). "
                "Offline, pass a local save_to_disk folder instead."
            ) from error
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DomainError(f"{role} '{spec}' has splits {sorted(loaded)}, not '{split}'; pick one with the matching --*_split flag")
        loaded = loaded[split]
    return _select_columns(loaded, spec, role, with_labels, image_column, label_column)


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
