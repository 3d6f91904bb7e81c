"""Which torch device a training or inference step runs on, and what that implies.

Why one place: AMP (mixed precision) and pinned host memory only help on CUDA (on
CPU, autocast to bfloat16 is slower for these small models and pinning costs page
locking for nothing), so both follow from the device, never set apart from it. A
Dagster ``ConfigurableResource`` wraps :class:`DeviceConfig`; this module stays
Dagster-free, and imports torch only when a device is used (loading the code location, which
builds CPU-only pixel embedders, must not pay torch's import).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

DevicePreference = Literal["auto", "cpu", "cuda"]
PREFERENCES: Final[tuple[DevicePreference, ...]] = ("auto", "cpu", "cuda")


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """The resolved device: ``device`` is ``"cpu"`` or ``"cuda"`` (``"cuda:N"`` when indexed).

    ``amp`` is True only on CUDA (autocast to ``amp_dtype``: bfloat16 where the GPU
    supports it, else float16 with a gradient scaler); ``pin_memory`` likewise.
    """

    device: str
    amp: bool
    pin_memory: bool
    amp_dtype: str | None = None

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    @property
    def is_cuda(self) -> bool:
        # The device string is "cpu", "cuda" or "cuda:N" (pick_device writes it): no torch needed.
        return self.device.split(":", 1)[0] == "cuda"

    @property
    def needs_grad_scaler(self) -> bool:
        """float16 autocast needs loss scaling to keep small gradients; bfloat16 does not."""
        return self.amp and self.amp_dtype == "float16"

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """``torch.autocast`` when AMP is on, else a no-op context."""
        if not self.amp or self.amp_dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type="cuda", dtype=getattr(torch, self.amp_dtype))

    def description(self) -> str:
        """Human label for metadata: ``cpu`` or ``cuda (NVIDIA H100 ...)``."""
        if self.is_cuda:
            import torch

            try:
                return f"{self.device} ({torch.cuda.get_device_name(self.torch_device)})"
            except Exception:  # pragma: no cover - driver hiccup, the device string is enough
                return self.device
        return self.device


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """What a user asks for: ``preference`` auto|cpu|cuda; ``amp``/``pin_memory`` may only turn features off."""

    preference: DevicePreference = "auto"
    amp: bool = True
    pin_memory: bool = True

    def resolve(self) -> DeviceSettings:
        return pick_device(self.preference, allow_amp=self.amp, allow_pin_memory=self.pin_memory)


def pick_device(
    preference: DevicePreference | str = "auto",
    *,
    allow_amp: bool = True,
    allow_pin_memory: bool = True,
) -> DeviceSettings:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU raises (no silent CPU fallback).

    ``preference`` may also name an indexed GPU (``"cuda:1"``).
    """
    pref = preference.strip().lower()
    if pref == "cpu":  # no torch import: a CPU choice needs no driver query
        return DeviceSettings("cpu", amp=False, pin_memory=False, amp_dtype=None)
    import torch

    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cpu":
        return DeviceSettings("cpu", amp=False, pin_memory=False, amp_dtype=None)
    if pref == "cuda" or pref.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} requested but torch sees no CUDA device "
                               f"(torch {torch.__version__})")
        dev = torch.device(pref)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {preference!r} requested but only "
                               f"{torch.cuda.device_count()} CUDA device(s) exist")
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return DeviceSettings(
            str(dev),
            amp=allow_amp,
            pin_memory=allow_pin_memory,
            amp_dtype=dtype if allow_amp else None,
        )
    raise ValueError(f"device preference must be one of {PREFERENCES} (or 'cuda:N'), got {preference!r}")


__all__ = ["PREFERENCES", "DeviceConfig", "DevicePreference", "DeviceSettings", "pick_device"]
