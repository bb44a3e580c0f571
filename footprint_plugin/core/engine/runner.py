"""The network runner: prepared network, precision, TTA, look-direction flip, batching and out-of-memory retries."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from ..common.callbacks import CancelCallback, check_canceled
from ..models import fuse_conv_activation, fuse_conv_bn, reduced_precision_copy
from ..models.optimize import fold_zero_padding
from .device import DeviceChoice, cpu_supports_bf16, is_out_of_memory
from .options import PRECISIONS


def tta_transforms(policy: str, square: bool) -> list[tuple[Callable, Callable]]:
    identity = (lambda x: x, lambda y: y)
    if policy == "lr":
        return [identity, (lambda x: x.flip(-1), lambda y: y.flip(-1))]
    if policy == "d4":
        transforms = []
        for k in (0, 1, 2, 3) if square else (0, 2):
            for flip in (False, True):

                def forward(x, k=k, flip=flip):
                    return torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))

                def inverse(y, k=k, flip=flip):
                    y = torch.rot90(y, -k, (-2, -1))
                    return y.flip(-1) if flip else y

                transforms.append((forward, inverse))
        return transforms
    return [identity]


class TileRunner:
    """Runs batches of scaled tiles through the network and returns sigmoid probabilities."""

    def __init__(
        self,
        model: nn.Module,
        choice: DeviceChoice,
        precision: str,
        tta_policy: str,
        look_direction_flip: bool,
        square_tiles: bool,
    ) -> None:
        self.model = model
        self.choice = choice
        self.precision = precision
        self.transforms = tta_transforms(tta_policy, square_tiles)
        self.look_direction_flip = look_direction_flip
        self.notes: list[str] = []
        # Checked between TTA passes: with d4, one batch is eight forward passes, too long to wait for a cancel.
        self.is_canceled: Optional[CancelCallback] = None

        self._cpu_bf16_model: Optional[nn.Module] = None

    @property
    def device(self) -> torch.device:
        return torch.device(self.choice.device)

    def _network(self, precision: str) -> tuple[nn.Module, Any]:
        """(network, autocast context) for a precision on the current device."""
        if precision == "fp32":
            return self.model, contextlib.nullcontext()
        if self.device.type == "cpu" and precision == "bf16":
            # A bf16 copy of the network instead of autocast, so the fused oneDNN conv+activation
            # kernels see bf16 inputs and weights (autocast would cast around them).
            if self._cpu_bf16_model is None:
                self._cpu_bf16_model = reduced_precision_copy(self.model, torch.bfloat16)
            return self._cpu_bf16_model, contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return self.model, torch.autocast(self.device.type, dtype=dtype)

    def run(self, batch: np.ndarray, precision: Optional[str] = None) -> np.ndarray:
        """(B, C, h, w) float32 -> (B, heads, h, w) float32 probabilities."""
        precision = precision or self.precision
        network, autocast = self._network(precision)
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self.device.type != "mps":
                x = x.contiguous(memory_format=torch.channels_last)
            if self.look_direction_flip:
                x = torch.rot90(x, 2, (-2, -1))
            total = None
            with autocast:
                for forward, inverse in self.transforms:
                    check_canceled(self.is_canceled)
                    prob = torch.sigmoid(inverse(network(forward(x))).float())
                    total = prob if total is None else total + prob
            assert total is not None
            total = total / len(self.transforms)
            if self.look_direction_flip:
                total = torch.rot90(total, 2, (-2, -1))
            return total.contiguous().cpu().numpy()

    def move_to_cpu(self, reason: str) -> None:
        self.model = self.model.to("cpu")
        self._cpu_bf16_model = None
        previous = self.choice
        self.choice = DeviceChoice("cpu", "CPU", f"{previous.name}: {reason}; continued on the CPU.")
        self.precision = "bf16" if cpu_supports_bf16() and self.precision != "fp32" else "fp32"
        self.notes.append(self.choice.note)


def resolve_precision(request: str, choice: DeviceChoice) -> tuple[str, bool, list[str]]:
    """(precision, needs the bf16-vs-fp32 mask check, notes)."""
    request = (request or "auto").lower()
    notes: list[str] = []
    if request not in PRECISIONS:
        notes.append(f"Unknown precision '{request}' (use auto, fp32, bf16 or fp16); using auto.")
        request = "auto"
    kind = choice.kind
    if kind == "cuda":
        if request == "auto":
            # fp16 keeps 3 more mantissa bits than bf16 (BN-folded inference stays in range); checked too.
            return "fp16", True, notes
        if request == "bf16" and not torch.cuda.is_bf16_supported():
            notes.append("This GPU has no bf16 support; using fp16.")
            return "fp16", False, notes
        return request, False, notes
    if kind == "mps":
        return ("fp32" if request == "auto" else request), False, notes
    # CPU
    if request == "auto":
        return ("bf16", True, notes) if cpu_supports_bf16() else ("fp32", False, notes)
    if request == "bf16" and not cpu_supports_bf16():
        notes.append("This CPU has no native bf16 (AVX512_BF16 or AMX); using fp32, which is faster here.")
        return "fp32", False, notes
    if request == "fp16":
        notes.append("fp16 is not supported for CPU inference; using fp32.")
        return "fp32", False, notes
    return request, False, notes


def default_batch_size(choice: DeviceChoice, tile_h: int, tile_w: int) -> int:
    pixels = tile_h * tile_w
    if choice.kind == "cuda":
        free, _total = torch.cuda.mem_get_info(torch.device(choice.device))
        # ~1 KB of activations per pixel covers the largest model here at bf16, with headroom.
        return int(max(1, min(64, (free * 0.6) // (pixels * 1024))))
    if choice.kind == "mps":
        return 4
    # On CPU larger batches gain nothing and cost memory; two 512 px tiles keep both cores busy.
    return max(1, min(4, (2 * 512 * 512) // max(pixels, 1)))


def prepare_model(model: nn.Module, choice: DeviceChoice) -> nn.Module:
    """An eval-mode copy with BatchNorm folded into convolutions, channels_last, on the device.

    The caller's model is left untouched (training passes its live model for validation).
    """
    was_training = model.training
    model.eval()
    try:
        prepared = fold_zero_padding(fuse_conv_bn(copy.deepcopy(model)))
    finally:
        model.train(was_training)
    if choice.kind == "cpu":
        prepared = fuse_conv_activation(prepared)
    prepared = prepared.to(choice.device)
    if choice.kind != "mps":
        prepared = prepared.to(memory_format=torch.channels_last)
    for parameter in prepared.parameters():
        parameter.requires_grad_(False)
    return prepared


def _run_with_retry(runner: TileRunner, batch: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """Run in sub-batches; on GPU out-of-memory halve the batch, and at 1 continue on the CPU."""
    outputs = []
    start = 0
    while start < len(batch):
        part = batch[start : start + batch_size]
        try:
            outputs.append(runner.run(part))
            start += len(part)
        except RuntimeError as exc:
            if not is_out_of_memory(exc) or runner.device.type == "cpu":
                raise
            if runner.device.type == "cuda":
                torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size = max(1, batch_size // 2)
                runner.notes.append(f"GPU out of memory: batch size reduced to {batch_size}.")
            else:
                runner.move_to_cpu("out of memory even with one tile per batch")
    return np.concatenate(outputs), batch_size


class BatchRunner:
    """Turns scaled tiles into probabilities: batching and out-of-memory retries.

    `check_precision` is True until the reduced-precision gate (precision.py) has run for this raster.
    """

    def __init__(
        self, runner: TileRunner, batch_size: int, check_precision: bool, threshold: float, notes: list[str]
    ) -> None:
        self.runner = runner
        self.batch_size = batch_size
        self.check_precision = check_precision
        self.threshold = threshold
        self.notes = notes

    def run(self, tiles: list[np.ndarray]) -> np.ndarray:
        outputs, self.batch_size = _run_with_retry(self.runner, np.stack(tiles), self.batch_size)
        return outputs
