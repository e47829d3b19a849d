"""Any image-classification dataset already prepared by tensorflow-datasets (optional extra).

    ds = load_tfds("imagenet2012", "validation", data_dir="~/tensorflow_datasets", image_size=224)

Nothing is downloaded or prepared here: the dataset must already be built in ``data_dir``
(``tfds build NAME --file_format=array_record`` on a machine with TensorFlow). Datasets in the
``array_record`` format are read without TensorFlow; ``tfrecord`` ones need it installed.
The whole split is decoded into memory, so large datasets need a slice split such as
``"train[:10%]"``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from diffjax.data.archive import DatasetFormatError
from diffjax.data.dataset import Dataset
from diffjax.data.download import DatasetUnavailableError

_INSTALL = "pip install 'diffjax[tfds]'"


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            f"'tfds:' datasets need the optional tensorflow-datasets extra: {_INSTALL}"
        ) from e
    return tfds


def _resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (bicubic), then crop the centre ``size``x``size``."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    im = Image.fromarray(image).resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(im)[top : top + size, left : left + size]


def _as_rgb_uint8(image, source: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise DatasetFormatError(
            f"{source}: expected uint8 [H, W, 1|3] images, got {image.dtype} {image.shape}"
        )
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def load_tfds(name: str, split: str, data_dir=None, image_size: int | None = None) -> Dataset:
    """Read split ``split`` of the prepared TFDS dataset ``name``.

    Args:
      name: a TFDS name, optionally with config/version (``"cifar10"``, ``"imagenet2012"``).
      split: a TFDS split string (``"train"``, ``"test"``, ``"validation[:1000]"``).
      data_dir: the TFDS data directory; ``None`` uses TFDS's default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      image_size: resize (shorter side) and centre-crop every image to this size; required
        when the images differ in size.

    Raises:
      ImportError: tensorflow-datasets is not installed.
      DatasetUnavailableError: the dataset is unknown or not prepared in ``data_dir``.
    """
    tfds = _import_tfds()
    source = f"tfds:{name}"
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    except Exception as e:  # tfds raises its own DatasetNotFoundError and friends
        raise DatasetUnavailableError(f"{source}: {type(e).__name__}: {e}") from e
    if not builder.is_prepared():
        raise DatasetUnavailableError(
            f"{source} is not prepared in {builder.data_dir_root}: build it once on a machine "
            f"with TensorFlow (`tfds build {name} --data_dir={builder.data_dir_root} "
            "--file_format=array_record`), then copy that folder here or pass data_dir."
        )
    info = builder.info
    if not info.supervised_keys or len(info.supervised_keys) != 2:
        raise DatasetFormatError(f"{source} is not an (image, label) classification dataset")
    image_key, label_key = info.supervised_keys
    class_names = tuple(info.features[label_key].names)
    if str(getattr(info.file_format, "value", info.file_format)) == "array_record":
        records = builder.as_data_source(split=split)
    else:
        records = tfds.as_numpy(builder.as_dataset(split=split))  # needs TensorFlow
    images, labels = [], []
    for record in records:
        image = _as_rgb_uint8(record[image_key], source)
        if image_size is not None and image.shape[:2] != (image_size, image_size):
            image = _resize_center_crop(image, image_size)
        images.append(image)
        labels.append(int(record[label_key]))
    if not images:
        raise DatasetFormatError(f"{source}: split {split!r} is empty")
    if len({x.shape for x in images}) > 1:
        raise DatasetFormatError(f"{source}: images differ in size; pass image_size=")
    return Dataset(np.stack(images), np.asarray(labels, np.int32), class_names, f"{source}/{split}")
