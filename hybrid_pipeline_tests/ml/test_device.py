"""Device choice: auto follows CUDA availability; AMP and pinned memory only on CUDA."""

from __future__ import annotations

import pytest
import torch

from hybrid_pipeline.ml.device import DeviceConfig, pick_device


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_cpu_without_a_gpu_with_amp_and_pinning_off(no_cuda) -> None:
    s = pick_device("auto")

    assert (s.device, s.amp, s.pin_memory, s.amp_dtype) == ("cpu", False, False, None)
    assert s.torch_device == torch.device("cpu")
    assert not s.is_cuda and not s.needs_grad_scaler


def test_auto_on_this_machine_matches_torch() -> None:
    s = pick_device()
    if torch.cuda.is_available():
        assert s.is_cuda and s.amp and s.pin_memory
    else:
        assert (s.device, s.amp, s.pin_memory) == ("cpu", False, False)


def test_cpu_is_cpu_even_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    assert pick_device("cpu") == DeviceConfig("cpu").resolve()
    assert pick_device("cpu").amp is False


def test_auto_picks_cuda_with_amp_and_pinning_when_a_gpu_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    s = pick_device("auto")

    assert (s.device, s.amp, s.pin_memory, s.amp_dtype) == ("cuda", True, True, "bfloat16")
    off = DeviceConfig("cuda", amp=False, pin_memory=False).resolve()
    assert (off.amp, off.pin_memory, off.amp_dtype) == (False, False, None)


def test_fp16_gpus_need_a_grad_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)

    s = pick_device("cuda")

    assert s.amp_dtype == "float16" and s.needs_grad_scaler


def test_cuda_without_a_gpu_fails_loudly(no_cuda) -> None:
    with pytest.raises(RuntimeError, match="no CUDA device"):
        pick_device("cuda")


def test_unknown_preference_is_rejected() -> None:
    with pytest.raises(ValueError, match="device preference"):
        pick_device("tpu")


def test_autocast_is_a_no_op_on_cpu(no_cuda) -> None:
    with pick_device("cpu").autocast():
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float32
