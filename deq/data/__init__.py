"""The data stage: verified raw files, prepared token streams, batching, and the copy-memory task.

- :func:`fetch`: make a dataset's raw files present and verified (present, mirror, or download).
- :func:`prepare`: the vocabulary and memory-mapped int32 id streams of a corpus (cached).
- :func:`batchify`, :func:`segments`: contiguous streams and the (inputs, targets) segments over them.
- :func:`make_copy_memory`, :func:`copy_memory_splits`: Table 1's synthetic task.
"""

from .copy_memory import copy_memory_splits, make_copy_memory
from .corpus import SPLITS, VOCAB_SIZES, Corpus, batchify, prepare, segments
from .download import CHECKSUMS, DATASETS, MIRROR_ENV, DataFile, MissingDataError, Source, fetch

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "MIRROR_ENV",
    "SPLITS",
    "VOCAB_SIZES",
    "Corpus",
    "DataFile",
    "MissingDataError",
    "Source",
    "batchify",
    "copy_memory_splits",
    "fetch",
    "make_copy_memory",
    "prepare",
    "segments",
]
