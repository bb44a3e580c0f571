"""Compute device choice: cuda > mps > cpu, a user override, and the reason for any fall-back."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass
from typing import Optional

import torch

DEVICE_REQUESTS = ("auto", "cpu", "cuda", "mps")


@dataclass
class DeviceChoice:
    device: str  # "cpu", "cuda:0", "mps": pass to torch.device()
    name: str  # human name, e.g. "NVIDIA H100 80GB HBM3" or "CPU (x86_64, 2 threads)"
    note: str = ""  # why this device (and why not the requested one); empty when as requested

    @property
    def kind(self) -> str:
        return self.device.split(":")[0]


def cpu_name() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return f"CPU ({model}, {torch.get_num_threads()} threads)"


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512_BF16 or AMX); elsewhere bf16 is emulated and slow."""
    flags = ""
    with contextlib.suppress(Exception):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = line
                    break
    native = any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))
    supported = False
    with contextlib.suppress(Exception):
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return native and supported and os.environ.get("FOOTPRINT_DISABLE_BF16", "") == ""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def describe_devices() -> list[DeviceChoice]:
    """Every usable device, best first; the CPU is always last."""
    choices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            memory = f"{props.total_memory / 2**30:.0f} GiB"
            choices.append(DeviceChoice(f"cuda:{index}", f"{props.name} ({memory})"))
    if _mps_available():
        choices.append(DeviceChoice("mps", "Apple GPU (Metal)"))
    choices.append(DeviceChoice("cpu", cpu_name()))
    return choices


def _cuda_unavailable_reason() -> str:
    if torch.version.cuda is None:
        return "this PyTorch was built without CUDA (install a CUDA build of torch to use an NVIDIA GPU)"
    return "no CUDA GPU was found (check the NVIDIA driver)"


def select_device(request: Optional[str] = "auto") -> DeviceChoice:
    """Resolve "auto" | "cpu" | "cuda" | "cuda:N" | "mps" to an available device, explaining fall-backs."""
    request = (request or "auto").strip().lower()
    kind, _, index_text = request.partition(":")
    if kind not in DEVICE_REQUESTS or (index_text and (kind != "cuda" or not index_text.isdigit())):
        cpu = DeviceChoice("cpu", cpu_name())
        cpu.note = f"Unknown device '{request}' (use auto, cpu, cuda, cuda:N or mps); using the CPU."
        return cpu
    devices = describe_devices()
    cpu = devices[-1]
    if kind == "cpu":
        return cpu
    if kind == "auto":
        best = devices[0]
        if best.kind == "cpu":
            reasons = [_cuda_unavailable_reason()]
            if platform.system() == "Darwin":
                reasons.append("Metal (MPS) is not available")
            best.note = "Using the CPU: " + "; ".join(reasons) + "."
        return best
    if kind == "cuda":
        cuda = [d for d in devices if d.kind == "cuda"]
        if not cuda:
            cpu.note = f"CUDA was requested but {_cuda_unavailable_reason()}; using the CPU."
            return cpu
        index = int(index_text) if index_text else 0
        if index >= len(cuda):
            chosen = cuda[0]
            chosen.note = f"cuda:{index} does not exist ({len(cuda)} GPU(s) found); using cuda:0."
            return chosen
        return cuda[index]
    mps = [d for d in devices if d.kind == "mps"]
    if mps:
        return mps[0]
    cpu.note = "Metal (MPS) was requested but is not available on this machine; using the CPU."
    return cpu


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (they are RuntimeErrors with a recognisable message)."""
    if isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and "out of memory" in text
