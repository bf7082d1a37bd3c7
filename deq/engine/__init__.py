"""The engine of training runs. Import what you need from its modules (this file imports none of them, so
that the workflow can read ``gpus`` and ``slurm`` without importing torch):

- ``config``: :class:`TrainConfig`, one run's settings, checked on creation.
- ``checkpoint``: atomic checkpoints and resuming.
- ``memory``: :class:`MemoryMonitor`, :class:`AllocatorPeak`, :func:`saved_activation_bytes`: how much
  memory a run needed.
- ``records``: :class:`MetricsWriter`, :class:`TraceWriter`, :func:`run_metadata`: what a run writes.
- ``gpus``, ``slurm``: which GPUs a job may use, and what the cluster says.
"""
