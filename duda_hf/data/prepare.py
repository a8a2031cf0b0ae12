"""Convert a native dataset folder into a `datasets` folder (or a Hub dataset): parallel, streaming, resumable.

The files are split into shards of `shard_size` images. Each worker process writes one shard at a time
to an Arrow file under `<out>.partial/` (as `*.tmp`, renamed when complete), so memory stays flat
whatever the dataset size and an interrupted run continues from the finished shards. When every shard
is there they are joined into `<out>` (written beside it and renamed), and `<out>.partial/` is removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import datasets
from PIL import Image
from tqdm.auto import tqdm

from duda_hf.data.checks import check_resize, file_sizes
from duda_hf.data.errors import DomainError
from duda_hf.data.native import NativeDecoder, list_native_files, read_image
from duda_hf.jsonio import write_json

FEATURES_LABELLED = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
FEATURES_UNLABELLED = datasets.Features({"image": datasets.Image()})
MANIFEST_VERSION = 1


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # level 1: several times faster to write, ~10% larger
    return buffer.getvalue()


def convert_pair(image_path: str, label_path: str | None, format: str, *, resize_hw: tuple[int, int] | None = None) -> dict:
    """One row of the converted dataset: `image` (PNG bytes) and `label` (trainId PNG bytes) at `resize_hw` (height, width)."""
    image = read_image(image_path)
    size_wh = (resize_hw[1], resize_hw[0]) if resize_hw else None  # PIL's order
    row = {}
    if size_wh and image.size != size_wh:
        row["image"] = {"bytes": _png_bytes(image.resize(size_wh, Image.BILINEAR)), "path": None}
    else:
        row["image"] = {"bytes": Path(image_path).read_bytes(), "path": None}  # already verified by decoding it
    if label_path is not None:
        label = Image.fromarray(NativeDecoder(format).decode_label(label_path, image.size[::-1]))
        if size_wh and label.size != size_wh:
            label = label.resize(size_wh, Image.NEAREST)
        row["label"] = {"bytes": _png_bytes(label), "path": None}
    return row


def _write_shard(path: str, pairs: list[tuple[str, str | None]], format: str, resize_hw: tuple[int, int] | None) -> int:
    """Write one shard to `path` atomically; returns the number of rows."""
    features = FEATURES_LABELLED if pairs[0][1] is not None else FEATURES_UNLABELLED
    temporary = f"{path}.{os.getpid()}.tmp"
    writer = datasets.arrow_writer.ArrowWriter(features=features, path=temporary, writer_batch_size=16)
    try:
        for image_path, label_path in pairs:
            writer.write(features.encode_example(convert_pair(image_path, label_path, format, resize_hw=resize_hw)))
        writer.finalize()
    finally:
        writer.close()
    os.replace(temporary, path)
    return len(pairs)


def _manifest(root: Path, format: str, splits: dict, resize_hw, shard_size: int) -> dict:
    digest = hashlib.sha256()
    for split, (images, labels) in splits.items():
        for image, label in zip(images, labels):
            digest.update(f"{split}\0{image}\0{label}\n".encode())
    return {
        "version": MANIFEST_VERSION,
        "root": str(root),
        "format": format,
        "resize_hw": list(resize_hw) if resize_hw else None,
        "shard_size": shard_size,
        "files": digest.hexdigest(),
        "rows": {s: len(v[0]) for s, v in splits.items()},
    }


def prepare_native(
    root: str | os.PathLike,
    format: str,
    out: str | os.PathLike | None = None,
    *,
    splits: tuple[str, ...] = ("train",),
    conditions: tuple[str, ...] = (),
    with_labels: bool = True,
    resize_hw: tuple[int, int] | None = None,
    num_proc: int = 2,
    shard_size: int = 100,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Convert `root` (a `format` native folder) into a DatasetDict with columns `image` and `label` (trainIds).

    Args:
        out: the `save_to_disk` folder to write; with `push_to_hub` only, a work folder beside the cache is used.
        splits: native splits to convert (`val` may be written `validation`; the DatasetDict uses the names given).
        resize_hw: `(height, width)` of every image (bilinear) and label (nearest); None keeps the native size (bytes copied).
            One that would turn the images portrait, or the reverse (a size given width first), is refused before any
            conversion (`checks.check_resize`, from the image headers).
        num_proc: worker processes; shard_size: images per resumable unit of work.

    Returns:
        A `PrepareResult`: the converted DatasetDict (memory-mapped from `out`), where it is, and this run's throughput.
    """
    root = Path(root).expanduser()
    if out is None and push_to_hub is None:
        raise DomainError("give --out DIR, --push_to_hub ORG/NAME, or both")
    out_path = (
        Path(out).expanduser() if out else Path(datasets.config.HF_DATASETS_CACHE) / "duda_hf" / "prepared" / push_to_hub.replace("/", "--")
    )
    if out_path.exists() and not overwrite:
        raise DomainError(f"'{out_path}' exists already; pass --overwrite to replace it, or choose another --out")
    listed = {split: list_native_files(root, format, split, conditions=conditions, with_labels=with_labels) for split in splits}
    for split, (images, _) in listed.items():  # before any conversion: a size given width first, from the headers
        if resize_hw:
            check_resize("--resize", resize_hw, file_sizes(images, f"--root ({split})"), f"{format} {split}")
    manifest = _manifest(root, format, listed, resize_hw, shard_size)
    work = out_path.with_name(out_path.name + ".partial")
    if work.exists():
        previous = json.loads((work / "manifest.json").read_text()) if (work / "manifest.json").exists() else None
        if previous != manifest:  # different files or settings: the finished shards do not belong to this run
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "manifest.json", manifest, indent=1)

    tasks = []
    for split, (images, labels) in listed.items():
        pairs = list(zip(images, labels))
        for number, start in enumerate(range(0, len(pairs), shard_size)):
            tasks.append((str(work / f"{split}-{number:05d}.arrow"), pairs[start : start + shard_size]))
    pending = [(path, pairs) for path, pairs in tasks if not Path(path).exists()]
    total = sum(len(pairs) for _, pairs in tasks)
    done = total - sum(len(pairs) for _, pairs in pending)
    started = time.monotonic()
    with tqdm(total=total, initial=done, unit="img", desc=f"{format} -> {out_path.name}", disable=not progress) as bar:
        if num_proc <= 1:
            for path, pairs in pending:
                bar.update(_write_shard(path, pairs, format, resize_hw))
        else:
            # fork: workers inherit the imported modules instead of re-importing torch and transformers
            with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_write_shard, path, pairs, format, resize_hw) for path, pairs in pending]
                for future in as_completed(futures):
                    bar.update(future.result())  # re-raises a worker's DomainError with its message
    converted = total - done
    seconds = time.monotonic() - started

    dataset_dict = datasets.DatasetDict(
        {
            split: datasets.concatenate_datasets(
                [datasets.Dataset.from_file(path) for path, _ in tasks if Path(path).name.startswith(f"{split}-")]
            )
            for split in listed
        }
    )
    staging = out_path.with_name(out_path.name + ".writing")
    if staging.exists():
        shutil.rmtree(staging)
    dataset_dict.save_to_disk(str(staging))
    if out_path.exists():
        shutil.rmtree(out_path)
    os.replace(staging, out_path)
    shutil.rmtree(work)
    result = PrepareResult(datasets.load_from_disk(str(out_path)), out_path, converted, seconds)
    if push_to_hub:
        try:
            result.dataset.push_to_hub(push_to_hub, private=private)
        except Exception as error:  # offline, no token, refused: many exception types from huggingface_hub
            raise DomainError(
                f"pushing to the Hub dataset '{push_to_hub}' failed ({type(error).__name__}: {error}). The converted copy "
                f"is intact in '{out_path}'; log in with `hf auth login`, check the repo id and the network, then push that folder."
            ) from error
    return result


@dataclass
class PrepareResult:
    dataset: datasets.DatasetDict
    out: Path
    images_converted: int  # this run (a resumed run skips the shards already done)
    seconds: float
