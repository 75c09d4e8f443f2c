"""Every on/off environment switch takes 1 or 0 or nothing, and refuses anything else by name where it is read.

Each switch is read through cetrt.switches; here each call site is driven with a value a user might mistype
("yes", "true", "off") and must raise a UserError naming the variable, and with "0" and "1" must follow them.
"""

from __future__ import annotations

import pytest

import cetrt.backends.device as device_module
from cetrt.cli import quick_exit
from cetrt.errors import UserError
from cetrt.export.shared_graph import share_layer_graphs
from cetrt.runner.evaluate import loads_as_read, prepare_beside_tokenizing
from cetrt.switches import parse, switch
from cetrt.workload import encoded_cache


def pinned_read_buffers() -> bool:
    """CETRT_PINNED as the device reads it, through a stand-in for the cuda-bindings device."""
    from cetrt.backends import cuda_device

    made = []
    device_module._make_device.cache_clear()
    original = cuda_device.CudaRuntimeDevice
    cuda_device.CudaRuntimeDevice = lambda **kw: made.append(kw) or "device"
    try:
        device_module.device_for("cuda")
    finally:
        cuda_device.CudaRuntimeDevice = original
        device_module._make_device.cache_clear()
    return made[0]["pinned"]


READERS = {
    "CETRT_LOAD_AS_READ": loads_as_read,
    "CETRT_PREPARE_BESIDE": prepare_beside_tokenizing,
    "CETRT_SHARED_STREAM": lambda: device_module._shares_stream("cuda", True),
    "CETRT_PINNED": pinned_read_buffers,
    "CETRT_SHARE_LAYER_GRAPHS": share_layer_graphs,
    "CETRT_QUICK_EXIT": quick_exit,
}


@pytest.mark.parametrize("name", sorted(READERS))
@pytest.mark.parametrize("typo", ["yes", "true", "off", "2"])
def test_a_mistyped_switch_is_refused_by_name(monkeypatch, name, typo):
    monkeypatch.setenv(name, typo)
    with pytest.raises(UserError, match=f"{name}='{typo}': give 1 or 0"):
        READERS[name]()


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_switch_follows_one_and_zero(monkeypatch, name):
    for setting, expected in (("1", True), ("0", False), (" 0 ", False)):
        monkeypatch.setenv(name, setting)
        assert READERS[name]() is expected


def test_the_encoded_cache_switch_is_read_strictly(monkeypatch, tmp_path):
    monkeypatch.setenv("CETRT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CETRT_NO_CACHE", "true")
    with pytest.raises(UserError, match="CETRT_NO_CACHE='true'"):
        encoded_cache.cached(None, [], lambda: [], object)


def test_cetrt_device_refuses_a_name_it_does_not_know(monkeypatch):
    monkeypatch.setenv("CETRT_DEVICE", "cuda")
    with pytest.raises(UserError, match="CETRT_DEVICE='cuda': give torch or cuda-bindings"):
        device_module.device_for("cuda")


def test_unset_or_empty_is_the_default(monkeypatch):
    monkeypatch.delenv("CETRT_SOME_SWITCH", raising=False)
    assert switch("CETRT_SOME_SWITCH", True) is True and switch("CETRT_SOME_SWITCH", False) is False
    assert parse("X", "", True) is True and parse("X", "  ", False) is False


def test_the_ort_arena_strategy_is_one_ort_knows(monkeypatch):
    from cetrt.backends.onnxruntime import cuda_options

    monkeypatch.setenv("CETRT_ORT_ARENA", "kNextPowerOfTwo")
    assert cuda_options()["arena_extend_strategy"] == "kNextPowerOfTwo"
    monkeypatch.setenv("CETRT_ORT_ARENA", "next")
    with pytest.raises(UserError, match="CETRT_ORT_ARENA='next'"):
        cuda_options()
