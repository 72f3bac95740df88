"""Data sets for vaekit: sources, value ranges and batching. Re-exports only; each concept has its
module:

* :mod:`~vaekit.data.sources` — the registry of data sources (:data:`SOURCES`) and the front:
  :func:`load_dataset`, :func:`load_split`, :func:`download`, :func:`describe_sources`.
* :mod:`~vaekit.data.ranges` — the one place that maps uint8 pixels to each likelihood's range and
  back (:func:`to_model_range`, :func:`to_unit_range`, :data:`DATA_RANGE`), and the data log p(x) is
  measured on (:func:`likelihood_data`).
* :mod:`~vaekit.data.loaders` — :func:`make_loader` and the epoch order (:func:`epoch_indices`).
* :mod:`~vaekit.data.transforms` — channel and size conversion of in-memory splits.
* file formats: :mod:`~vaekit.data.mnist5k` (the embedded default data), :mod:`~vaekit.data.idx`
  (MNIST, Fashion-MNIST), :mod:`~vaekit.data.cifar`, :mod:`~vaekit.data.folder`.
"""

from vaekit.data.loaders import FolderLoader, InMemoryLoader, default_num_workers, epoch_indices, make_loader
from vaekit.data.ranges import (
    DATA_RANGE,
    LIKELIHOODS,
    binarize_once,
    dequantize,
    likelihood_data,
    to_model_range,
    to_uint8,
    to_unit_range,
)
from vaekit.data.sources import (
    DATA_SOURCES,
    DOWNLOADABLE,
    SOURCES,
    ImageData,
    Source,
    describe_sources,
    download,
    get_source,
    load_dataset,
    load_split,
)

__all__ = [
    "DATA_RANGE",
    "DATA_SOURCES",
    "DOWNLOADABLE",
    "LIKELIHOODS",
    "SOURCES",
    "FolderLoader",
    "ImageData",
    "InMemoryLoader",
    "Source",
    "binarize_once",
    "default_num_workers",
    "dequantize",
    "describe_sources",
    "download",
    "epoch_indices",
    "get_source",
    "likelihood_data",
    "load_dataset",
    "load_split",
    "make_loader",
    "to_model_range",
    "to_uint8",
    "to_unit_range",
]
