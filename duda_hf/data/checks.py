"""Checks of the training and evaluation data made before the first step, from the image file headers.

Reading a header does not decode the pixels: for a stored dataset only the first bytes of each image are read
(a memory-mapped slice), for a native folder each file is opened but not decoded. So a size mismatch between an
image and its label, a crop larger than the images, or a resize given width first (which would turn landscape
images portrait) stops the run at start-up, naming the images, instead of when the pair is drawn mid-run (or
never, as padding or distorted images).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence

import datasets
import pyarrow.compute as pc
from PIL import Image

from duda_hf.data.errors import DomainError

HEADER_BYTES = 65536  # PNG and WebP sizes are in the first bytes; a JPEG's after its EXIF block, which fits in most
MAX_LISTED = 5


def _open_size(source, where: str) -> tuple[int, int]:
    """The image's `(height, width)` from its header."""
    try:
        with Image.open(source) as image:
            width, height = image.size
            return height, width
    except (OSError, SyntaxError, ValueError) as error:  # PIL raises these for truncated, corrupt or non-image data
        raise DomainError(f"{where}: cannot read the image header ({error}); the file is corrupt or not an image") from error


def file_sizes(paths: Sequence[str], role: str) -> list[tuple[int, int]]:
    """`(height, width)` of each image file in `paths`, from its header."""
    return [_open_size(path, f"{role} '{path}'") for path in paths]


def header_sizes(dataset: datasets.Dataset, column: str, role: str) -> list[tuple[int, int]]:
    """`(height, width)` of every image of `column` (`image` or `label`), from the file headers, in row order.

    Works on a domain as `load_domain` returns it: a stored dataset (an `Image` column: bytes or paths) or a
    native folder (`image_path` / `label_path`); transforms such as label conversion do not change sizes.
    """
    if f"{column}_path" in dataset.column_names:  # a native folder
        return file_sizes(dataset.with_format(None)[f"{column}_path"], role)
    table = dataset.select_columns([column]).with_format("arrow")
    sizes = []
    for start in range(0, len(table), 1000):
        for chunk in table[start : start + 1000].column(column).chunks:
            stored, paths = chunk.field("bytes"), chunk.field("path").to_pylist()
            heads = pc.binary_slice(stored, 0, HEADER_BYTES).to_pylist()  # copies only the first bytes of each image
            for offset, (head, path) in enumerate(zip(heads, paths)):
                where = f"{role} row #{len(sizes)}" + (f" ({path})" if path else "")
                if head is None:
                    sizes.append(_open_size(path, where))
                    continue
                try:
                    sizes.append(_open_size(io.BytesIO(head), where))
                except DomainError:  # the size lies beyond the first bytes (a long JPEG header): read the whole file
                    sizes.append(_open_size(io.BytesIO(stored[offset].as_py()), where))
    return sizes


def _wxh(size_hw: Sequence[int]) -> str:
    """A size as people read it in messages, width x height."""
    return f"{size_hw[1]}x{size_hw[0]}"


def row_name(dataset: datasets.Dataset, index: int, column: str = "image") -> str:
    """`#index` and, where the dataset knows it, the file name."""
    if f"{column}_path" in dataset.column_names:
        return f"#{index} ({dataset.with_format(None)[index][f'{column}_path']})"
    path = dataset.select_columns([column]).with_format("arrow")[index : index + 1].column(column)[0]["path"].as_py()
    return f"#{index}" + (f" ({path})" if path else "")


def check_pairs(dataset: datasets.Dataset, role: str) -> list[tuple[int, int]]:
    """Every image has its label's size; returns the image sizes `(height, width)`.

    Raises:
        DomainError: naming the first pairs that differ, and how many do.
    """
    images, labels = header_sizes(dataset, "image", role), header_sizes(dataset, "label", role)
    wrong = [index for index, (image, label) in enumerate(zip(images, labels)) if image != label]
    if wrong:
        listed = "; ".join(f"{row_name(dataset, i)}: image {_wxh(images[i])}, label {_wxh(labels[i])}" for i in wrong[:MAX_LISTED])
        raise DomainError(
            f"{role}: {len(wrong)} of {len(images)} images differ in size from their labels (read from the file headers): "
            f"{listed}. An image and its label must have the same size: fix or remove those pairs."
        )
    return images


def check_crop(
    crop_hw: Sequence[int],
    dataset: datasets.Dataset,
    role: str,
    resize_flag: str,
    *,
    resize_hw: Sequence[int] | None = None,
    sizes_hw: list[tuple[int, int]] | None = None,
) -> None:
    """The crop `(height, width)` fits in every image as training sees it: resized to `resize_hw` when set, else as is.

    Args:
        resize_flag: the flag that resizes these images (`--source_resize`, which takes H W), for the message.
        resize_hw: `(height, width)` every image is resized to; None or empty: the images' own sizes.
        sizes_hw: the images' `(height, width)`, if already read (`check_pairs`); read from the headers otherwise.

    Raises:
        DomainError: how many images are smaller than the crop, the smallest, and the two ways out.
    """
    height, width = crop_hw
    if resize_hw:
        sizes_hw, where = [tuple(resize_hw)], f"{resize_flag} {resize_hw[0]} {resize_hw[1]}"
    else:
        sizes_hw = sizes_hw if sizes_hw is not None else header_sizes(dataset, "image", role)
    small = [index for index, (h, w) in enumerate(sizes_hw) if h < height or w < width]
    if not small:
        return
    smallest = min(small, key=lambda i: sizes_hw[i][0] * sizes_hw[i][1])
    if not resize_hw:
        where = f"image {row_name(dataset, smallest)}"
    fit_h, fit_w = min(height, min(h for h, _ in sizes_hw)), min(width, min(w for _, w in sizes_hw))
    raise DomainError(
        f"--crop_size {height} {width} (H W) is larger than {len(small)} of {len(sizes_hw)} {role} images (smallest: "
        f"{_wxh(sizes_hw[smallest])}, {where}); their crops would be padding in part. Lower --crop_size to at "
        f"most {fit_h} {fit_w}, or resize the images with {resize_flag} H W."
    )


def _orientation(size_hw: Sequence[int]) -> str | None:
    height, width = size_hw
    return "landscape" if width > height else "portrait" if height > width else None


def check_resize(flag: str, resize_hw: Sequence[int] | None, sizes_hw: Sequence[Sequence[int]], images: str) -> None:
    """A resize keeps the images' orientation: `flag` with `resize_hw` (its value, height first) that would make
    landscape images portrait, or portrait ones landscape, is a size given width first.

    Args:
        flag: the flag that sets the resize (`--source_resize`), for the message.
        resize_hw: `(height, width)` the images are resized to; None or empty: no resize, nothing to check.
        sizes_hw: the images' `(height, width)`.
        images: which images, for the message (`--source_dataset`).

    A square resize, square images, or images of both orientations (some would turn whichever way they are
    resized) are never an error.

    Raises:
        DomainError: the flag, its value, the images' size and the value with height first.
    """
    turned_to = _orientation(resize_hw) if resize_hw else None
    orientations = {_orientation(size) for size in sizes_hw} - {None}
    if turned_to is None or orientations != {"portrait" if turned_to == "landscape" else "landscape"}:
        return
    counts = Counter(tuple(size) for size in sizes_hw)
    common = counts.most_common(1)[0][0]
    shown = f"{_wxh(common)} (W x H) {images} images"
    if len(counts) > 1:
        shown = f"{images} images ({orientations.pop()}: {_wxh(common)} and {len(counts) - 1} other sizes, W x H)"
    height, width = resize_hw
    raise DomainError(
        f"{flag} {height} {width} would make the {shown} {turned_to}: sizes are H W, height first; did you mean {flag} {width} {height}?"
    )


def check_training_data(
    source: datasets.Dataset,
    target: datasets.Dataset,
    target_eval: datasets.Dataset,
    crop_size_hw: Sequence[int],
    *,
    source_resize_hw: Sequence[int] | None = None,
    target_resize_hw: Sequence[int] | None = None,
    eval_resize_hw: Sequence[int] | None = None,
) -> None:
    """Before the first step: labels the size of their images (source, target validation), resizes that keep the
    images' orientation, crops that fit.

    Sizes are `(height, width)`; a resize of None keeps the images' own sizes.
    """
    source_sizes = check_pairs(source, "--source_dataset")
    check_resize("--source_resize", source_resize_hw, source_sizes, "--source_dataset")
    check_crop(crop_size_hw, source, "--source_dataset", "--source_resize", resize_hw=source_resize_hw, sizes_hw=source_sizes)
    target_sizes = header_sizes(target, "image", "--target_dataset")
    check_resize("--target_resize", target_resize_hw, target_sizes, "--target_dataset")
    check_crop(crop_size_hw, target, "--target_dataset", "--target_resize", resize_hw=target_resize_hw, sizes_hw=target_sizes)
    eval_sizes = check_pairs(target_eval, "--target_eval_dataset")
    check_resize("--eval_resize", eval_resize_hw, eval_sizes, "--target_eval_dataset")
