"""The data stage: verified raw files, prepared token streams, batching, and the copy-memory task.

- :func:`fetch`: make a dataset's raw files present and verified (present, mirror, or download).
- :func:`prepare`: the vocabulary and memory-mapped int32 id streams of a corpus (cached).
- :func:`batchify`, :func:`segments`: contiguous streams and the (inputs, targets) segments over them.
- :func:`make_copy_memory`, :func:`copy_memory_splits`: Table 1's synthetic task.
"""

from deq.lazy import exports

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

# Loaded on first use (deq.lazy): the row registry reads VOCAB_SIZES without importing torch.
__getattr__, __dir__ = exports(__name__, {
    **dict.fromkeys(("copy_memory_splits", "make_copy_memory"), "deq.data.copy_memory"),
    **dict.fromkeys(("SPLITS", "Corpus", "batchify", "prepare", "segments"), "deq.data.corpus"),
    **dict.fromkeys(("CHECKSUMS", "DATASETS", "MIRROR_ENV", "VOCAB_SIZES", "DataFile", "MissingDataError", "Source",
                     "fetch"), "deq.data.download"),
})
