"""Peak memory of a training run, measured the same way on a GPU and on a CPU-only machine.

:class:`MemoryMonitor` is a context manager around the measured code. :meth:`MemoryMonitor.record`
returns a flat dict with these keys (``None`` where a quantity was not measured on this machine):

- ``device``: the CUDA device name, or the CPU model where CUDA is not available.
- ``nvml``: True if NVML (the driver's management library) was sampled, False otherwise.
- ``nvml_reason``: why NVML was not used or stopped early (``None`` when it worked throughout).
- ``gpu_process_source``: ``'process'`` (this process's own entry in NVML's list of compute
  processes) or ``'device'`` (whole-device used memory, the fallback where the per-process query
  fails, lacks permission, reports no value, or cannot see this PID, as inside many containers).
- ``gpu_process_peak_bytes``: peak GPU memory of this process (source above), sampled by NVML;
  includes the CUDA context and the caching allocator's unused reserve.
- ``gpu_device_peak_bytes``: peak used memory of the whole device (every process on it), sampled.
- ``cuda_max_allocated_bytes``: ``torch.cuda.max_memory_allocated`` since entry (tensors only).
- ``cuda_max_reserved_bytes``: ``torch.cuda.max_memory_reserved`` since entry (allocator's pool).
- ``rss_peak_bytes``: ``ru_maxrss`` of this process: the exact resident-set peak over the whole
  process lifetime, so it includes anything before entry (imports, data loading) and cannot be reset.
- ``rss_sampled_peak_bytes``: largest resident set seen by sampling ``/proc/self/statm`` while inside
  the monitor: confined to the monitored window, but a spike shorter than ``interval`` can be missed.
- ``saved_activation_bytes``: largest total over the :meth:`MemoryMonitor.saved_activations`
  contexts of the bytes autograd saved for backward (see :class:`SavedActivations`).
- ``saved_activation_bytes_excl_embedding``: the same with the ``exclude`` tensors (the word
  embedding, as in the paper's protocol) left out; ``None`` if no context was given any to exclude.

The numeric keys (all but the first four) are :data:`MEMORY_FIELDS`; every key is in :data:`RECORD_KEYS`.

>>> import torch
>>> from deq.engine.memory import MemoryMonitor
>>> w = torch.randn(3, 4, requires_grad=True)
>>> with MemoryMonitor() as monitor:
...     with monitor.saved_activations(exclude={w.data_ptr()}):
...         y = torch.randn(3, 4, requires_grad=True) * w  # saves both factors: 2 * 48 bytes
>>> rec = monitor.record()
>>> rec["saved_activation_bytes"], rec["saved_activation_bytes_excl_embedding"]
(96, 48)
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from deq.provenance import cpu_name

MEMORY_FIELDS = (
    "gpu_process_peak_bytes",
    "gpu_device_peak_bytes",
    "cuda_max_allocated_bytes",
    "cuda_max_reserved_bytes",
    "rss_peak_bytes",
    "rss_sampled_peak_bytes",
    "saved_activation_bytes",
    "saved_activation_bytes_excl_embedding",
)
RECORD_KEYS = ("device", "nvml", "nvml_reason", "gpu_process_source", *MEMORY_FIELDS)

_STATM = Path("/proc/self/statm")
# NVML's per-process query, newest first; the unversioned name is v3 in current nvidia-ml-py and
# fails (NVMLLibraryMismatchError) against a driver older than that API.
_PROCESS_QUERIES = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2")


def device_name() -> str:
    """The current CUDA device's name, or the CPU model where CUDA is not available."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()


def rss_peak_bytes() -> int:
    """Lifetime peak resident set of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _current_rss_bytes() -> int:
    """Resident set now: second field of /proc/self/statm, in pages."""
    return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- bytes saved for backward ---------------------------------------------------------------------


class SavedActivations:
    """Context manager counting the bytes of the tensors autograd saves for backward inside it.

    Each distinct storage is counted once, at its full size (``untyped_storage().nbytes()``): a
    saved view keeps its whole storage alive, and views of one buffer (q, k, v chunks of one
    projection, a tensor saved by two ops) must not be counted twice. A storage counts again only if
    every tensor it was saved through has been freed, so a recycled address is not mistaken for a
    duplicate. Tensors without a storage fall back to ``numel * element_size``.

    Parameters (and other leaves) that an op saves, such as a weight saved for the input gradient
    of a matmul, *are* included in :attr:`bytes`: the hook cannot tell them from activations. Pass
    their ``data_ptr()`` in ``exclude`` to leave them out of :attr:`bytes_excluding` (a tensor or a
    view of it is matched by its own ``data_ptr()`` or its storage's).

    Only tensors saved through autograd (built-in ops, ``ctx.save_for_backward``) are seen, not ones
    a custom Function stores as ``ctx`` attributes. The hooks are thread-local and an inner
    ``saved_tensors_hooks`` context (e.g. activation checkpointing) hides saves from this one.
    """

    def __init__(self, exclude: Iterable[int] = ()) -> None:
        self.exclude = frozenset(exclude)
        self.bytes = 0  # every saved storage
        self.bytes_excluding = 0  # every saved storage not in `exclude`
        self._seen: dict[int, list[weakref.ref]] = {}  # storage address -> tensors saved through it
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def __enter__(self) -> SavedActivations:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._hooks is not None, "__exit__ without __enter__"
        self._hooks.__exit__(*exc)
        self._hooks = None
        self._seen.clear()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
            address, nbytes = storage.data_ptr(), storage.nbytes()
            pointers = {address, tensor.data_ptr()}
        except (RuntimeError, NotImplementedError):  # no storage (e.g. a wrapper subclass)
            address, nbytes, pointers = None, tensor.numel() * tensor.element_size(), set()
        if address is not None:
            alive = [ref for ref in self._seen.get(address, []) if ref() is not None]
            self._seen[address] = [*alive, weakref.ref(tensor)]
            if alive:
                return tensor
        self.bytes += nbytes
        if not pointers & self.exclude:
            self.bytes_excluding += nbytes
        return tensor  # the saved tensor itself: measuring must not change what backward sees


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def saved_activation_bytes(exclude: Iterable[int] = ()) -> SavedActivations:
    """A :class:`SavedActivations` counter; read ``.bytes`` / ``.bytes_excluding`` after the block."""
    return SavedActivations(exclude)


# --- the monitor ----------------------------------------------------------------------------------


class MemoryMonitor:
    """Measures peak memory of the code inside ``with MemoryMonitor() as monitor:``.

    On entry with CUDA: resets torch's peak statistics for ``device`` (default: the current one)
    and, if NVML initialises, samples this process's and the device's used GPU memory every
    ``interval`` seconds on a daemon thread. The same thread samples the resident set from
    /proc/self/statm where it exists, so a CPU-only run is measured too. Any NVML failure
    (missing library or driver, no permission, an API the driver lacks) is caught and reported
    as ``nvml: False`` with the reason; it never reaches the caller. Keys: see the module docstring.
    """

    def __init__(self, interval: float = 0.01, device: int | None = None) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, got {interval=}")
        self.interval, self.device = interval, device
        self._cuda = False
        self._nvml = None  # the pynvml module while NVML is in use
        self._nvml_ok = False  # NVML was initialised and sampled (stays True if sampling stops late)
        self._nvml_reason: str | None = None
        self._handle: Any = None
        self._process_query: Any = None  # NVML function listing compute processes, if it works here
        self._peaks: dict[str, int | None] = dict.fromkeys(
            ("gpu_process_peak_bytes", "gpu_device_peak_bytes", "rss_sampled_peak_bytes"))
        self._cuda_max: tuple[int, int] | None = None  # (allocated, reserved), frozen at exit
        self._saved: list[SavedActivations] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False

    def __enter__(self) -> MemoryMonitor:
        self._cuda = torch.cuda.is_available()
        if self._cuda:
            if self.device is None:
                self.device = torch.cuda.current_device()
            torch.cuda.reset_peak_memory_stats(self.device)  # also creates the CUDA context
            self._start_nvml()
        else:
            self._nvml_reason = "CUDA not available"
        self._running = True
        self._sample()  # at least one sample, however short the block
        if self._nvml is not None or _STATM.exists():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="MemoryMonitor", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._sample()
        if self._cuda:
            self._cuda_max = self._read_cuda_max()
        self._running = False
        with self._lock:
            if self._nvml is not None:
                self._shutdown_nvml()

    def saved_activations(self, exclude: Iterable[int] = ()) -> SavedActivations:
        """A :class:`SavedActivations` context whose count goes into :meth:`record` (the largest one)."""
        counter = SavedActivations(exclude)
        self._saved.append(counter)
        return counter

    def record(self) -> dict[str, Any]:
        """The measurements so far (inside the block) or of the whole block (after it)."""
        if self._running:
            self._sample()
        cuda_max = self._read_cuda_max() if self._running and self._cuda else self._cuda_max
        excluding = [c.bytes_excluding for c in self._saved if c.exclude]
        with self._lock:
            peaks = dict(self._peaks)
        values = {
            "device": torch.cuda.get_device_name(self.device) if self._cuda else cpu_name(),
            "nvml": self._nvml_ok,
            "nvml_reason": self._nvml_reason,
            "gpu_process_source": ("process" if self._process_query else "device") if self._nvml_ok else None,
            **peaks,
            "cuda_max_allocated_bytes": cuda_max[0] if cuda_max else None,
            "cuda_max_reserved_bytes": cuda_max[1] if cuda_max else None,
            "rss_peak_bytes": rss_peak_bytes(),
            "saved_activation_bytes": max((c.bytes for c in self._saved), default=None),
            "saved_activation_bytes_excl_embedding": max(excluding, default=None),
        }
        return {key: values[key] for key in RECORD_KEYS}

    # -- internals --

    def _read_cuda_max(self) -> tuple[int, int]:
        return (int(torch.cuda.max_memory_allocated(self.device)),
                int(torch.cuda.max_memory_reserved(self.device)))

    def _nvml_errors(self) -> tuple[type[BaseException], ...]:
        nvml = self._nvml
        # NVMLLibraryMismatchError (an unversioned call the driver lacks) is not an NVMLError.
        return (nvml.NVMLError, getattr(nvml, "NVMLLibraryMismatchError", nvml.NVMLError))

    def _start_nvml(self) -> None:
        try:
            import pynvml
        except ImportError as error:
            self._nvml_reason = f"pynvml not importable: {error}"
            return
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except self._nvml_errors() as error:
            self._nvml_reason = f"nvmlInit failed: {type(error).__name__}: {error}"
            self._nvml = None
            return
        try:
            self._handle = self._device_handle()
            pynvml.nvmlDeviceGetMemoryInfo(self._handle)
        except self._nvml_errors() as error:
            self._nvml_reason = f"NVML device query failed: {type(error).__name__}: {error}"
            self._shutdown_nvml()
            return
        self._process_query = self._find_process_query()
        self._nvml_ok = True

    def _shutdown_nvml(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml_errors():
            pass
        self._nvml = None

    def _device_handle(self) -> Any:
        """NVML handle of torch's device, by UUID (CUDA and NVML number devices differently under
        CUDA_VISIBLE_DEVICES), by index where torch does not expose the UUID."""
        uuid = getattr(torch.cuda.get_device_properties(self.device), "uuid", None)
        if uuid is not None:
            return self._nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        return self._nvml.nvmlDeviceGetHandleByIndex(self.device)

    def _find_process_query(self) -> Any:
        """The first per-process query that works here and reports this PID's memory, else None."""
        for name in _PROCESS_QUERIES:
            query = getattr(self._nvml, name, None)
            if query is None:
                continue
            try:
                if self._process_bytes(query) is not None:
                    return query
            except self._nvml_errors():
                continue
        return None

    def _process_bytes(self, query: Any) -> int | None:
        pid = os.getpid()
        used = [p.usedGpuMemory for p in query(self._handle) if p.pid == pid]
        return int(used[0]) if used and used[0] is not None else None

    def _sample(self) -> None:
        with self._lock:  # the sampling thread and record() both sample; NVML may be shut down
            self._sample_locked()

    def _sample_locked(self) -> None:
        rss = _current_rss_bytes() if _STATM.exists() else None
        process = device = None
        if self._nvml is not None:
            try:
                device = int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
                process = self._process_bytes(self._process_query) if self._process_query else device
            except self._nvml_errors() as error:  # e.g. the GPU fell off the bus: keep what we have
                self._nvml_reason = f"NVML sampling stopped: {type(error).__name__}: {error}"
                self._shutdown_nvml()
        for key, value in (("gpu_process_peak_bytes", process), ("gpu_device_peak_bytes", device),
                           ("rss_sampled_peak_bytes", rss)):
            if value is not None:
                old = self._peaks[key]
                self._peaks[key] = value if old is None else max(old, value)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


def adam_state_bytes(params: Iterable[torch.Tensor]) -> int:
    """Bytes a training step holds per parameter under Adam: the weight, its gradient and two moments."""
    return 4 * sum(p.numel() * p.element_size() for p in params)


class AllocatorPeak:
    """Peak bytes of the tensors allocated inside the block (above what was allocated at entry).

    On CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated at entry.
    On CPU there is no such counter, so the block runs under ``torch.profiler`` with
    ``profile_memory``, which records every allocation and free of the CPU allocator with its size
    and time; the peak is the largest running total in time order. It sees every tensor made
    inside (activations, gradients, solver buffers, the backward's temporaries). Tensors that
    existed before entry are not counted on either device, nor (on CPU) their frees: add what was
    alive before (parameters, optimiser moments) yourself. Profiling slows the block down: time it
    separately.

    >>> import torch
    >>> with AllocatorPeak() as peak:
    ...     a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
    ...     b = torch.empty(500, dtype=torch.float32)  # 2000 bytes
    ...     del a
    ...     c = torch.empty(250, dtype=torch.float32)  # 1000 bytes
    >>> peak.bytes
    6000
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.bytes: int | None = None
        self._profiler = None
        self._base = 0

    def __enter__(self) -> AllocatorPeak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        from torch.profiler import ProfilerActivity, profile

        self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profiler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._profiler.__exit__(*exc)
        if exc[0] is None:
            self.bytes = _timeline_peak(self._profiler)


def _timeline_peak(profiler) -> int:
    """The largest running total of the CPU allocations made inside a profile, in time order.

    A free counts only when its block was allocated inside the profile (matched by address): the
    allocator sometimes reports the free of an older block (it keeps sizes of blocks freed while no
    profiler listened, keyed by an address a later tensor may reuse), which would subtract bytes that
    were never added.
    """
    from torch._C._profiler import _EventType

    def walk(events):
        for event in events:
            yield event
            yield from walk(event.children)

    allocations = sorted(((e.start_time_ns, e.extra_fields) for e in
                          walk(profiler.profiler.kineto_results.experimental_event_tree())
                          if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu"),
                         key=lambda event: event[0])  # stable: same-time events keep the order recorded
    inside: dict[int, int] = {}  # address -> bytes of the blocks allocated inside and not yet freed
    live = peak = 0
    for _, block in allocations:
        if block.alloc_size > 0:
            inside[block.ptr] = block.alloc_size
            live += block.alloc_size
        elif block.ptr in inside:
            live -= inside.pop(block.ptr)
        peak = max(peak, live)
    return peak
