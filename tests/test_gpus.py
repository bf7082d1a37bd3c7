"""GPU assignment for concurrent jobs (deq/engine/gpus.py), with stand-in device names."""

from __future__ import annotations

import os
import threading

import pytest

from deq.engine import gpus
from deq.engine.gpus import claim_gpus, visible_gpus


@pytest.fixture(autouse=True)
def private_locks(tmp_path, monkeypatch):
    monkeypatch.setattr(gpus, "lock_dir", lambda: tmp_path / "locks")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_concurrent_claims_get_disjoint_devices_and_set_cuda_visible_devices():
    with claim_gpus(1, devices=["0", "1", "2"]) as first:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == first[0]
        with claim_gpus(2, devices=["0", "1", "2"]) as second:
            assert len(second) == 2 and not set(first) & set(second)
            assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(second)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_claim_waits_until_a_device_is_released():
    order = []
    with claim_gpus(1, devices=["0"]) as held:
        waiter = threading.Thread(target=lambda: _claim_and_record(order))
        waiter.start()
        waiter.join(timeout=0.3)
        assert waiter.is_alive() and order == []  # still waiting: device 0 is held
        order.append(("released", held[0]))
    waiter.join(timeout=5)
    assert order == [("released", "0"), ("claimed", "0")]


def _claim_and_record(order):
    with claim_gpus(1, devices=["0"], poll_s=0.05, log=lambda message: None) as held:
        order.append(("claimed", held[0]))


def test_no_gpus_means_the_cpu_and_too_many_is_an_error():
    with claim_gpus(1, devices=[]) as held:
        assert held == []
    with claim_gpus(0, devices=["0"]) as held:
        assert held == []
    with pytest.raises(ValueError, match="needs 3 GPUs but only 2"):
        with claim_gpus(3, devices=["0", "1"]):
            pass
    with pytest.raises(ValueError, match="int >= 0"):
        with claim_gpus(-1, devices=["0"]):
            pass


def test_visible_devices_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, GPU-abc")
    assert visible_gpus() == ["2", "GPU-abc"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []
