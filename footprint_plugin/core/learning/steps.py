"""One optimizer step: the masked loss, mixed precision where it pays, the parameter groups, a weight average.

The loss is masked by the supervision weight (valid imagery inside the area of interest, minus the
held-out block): pixels outside a reviewed cell neither reward nor punish anything.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

import torch
from torch.nn import functional

from ..common.errors import ModelError
from .config import TrainingConfig

HEAD_LOSS_WEIGHTS = {"footprint": 1.0, "boundary": 0.5, "contact": 0.5}


class WeightAverage:
    """An exponential moving average of a model's floating-point weights and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for key, value in model.state_dict().items():
            average = self.state[key]
            if average.is_floating_point():
                average.mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                average.copy_(value)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """The averaged weights in the model for the duration of the block, the live ones after."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield model
        finally:
            model.load_state_dict(live)


def select_device(name: str) -> torch.device:
    from ..engine.device import select_device

    return torch.device(select_device(name).device)


def _dice_loss(probabilities: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    dims = (0, 2, 3)
    intersection = (probabilities * targets * weight).sum(dims)
    total = ((probabilities + targets) * weight).sum(dims)
    return 1.0 - (2.0 * intersection + 1.0) / (total + 1.0)


def _edge_pixel_weight(targets: torch.Tensor, weight: torch.Tensor, heads: Sequence[str], edge_weight: float):
    """The supervision weight raised to 1 + edge_weight on boundary and contact pixels."""
    edges = [targets[:, i : i + 1] for i, head in enumerate(heads) if head in ("boundary", "contact")]
    if edge_weight <= 0 or not edges:
        return weight
    return weight * (1.0 + edge_weight * torch.amax(torch.cat(edges, dim=1), dim=1, keepdim=True))


def compute_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    heads: Sequence[str],
    kind: str = "bce",
    edge_weight: float = 0.0,
) -> torch.Tensor:
    """Masked (BCE or focal) + Dice per head, weighted by head. weight: (B,1,H,W) 0/1 supervision.

    edge_weight > 0 weighs the pixel term more on outline and contact pixels (Dice stays unweighted).
    """
    logits = logits.float()
    bce = functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if kind == "focal":
        p_t = torch.exp(-bce)
        bce = (1.0 - p_t) ** 2 * bce * 2.0
    pixel_weight = _edge_pixel_weight(targets, weight, heads, edge_weight)
    denominator = pixel_weight.sum().clamp_min(1.0)
    pixel_term = (bce * pixel_weight).sum(dim=(0, 2, 3)) / denominator
    dice_term = _dice_loss(torch.sigmoid(logits), targets, weight)
    head_weights = torch.tensor([HEAD_LOSS_WEIGHTS.get(h, 1.0) for h in heads], device=logits.device)
    return ((pixel_term + dice_term) * head_weights).sum() / head_weights.sum()


def training_amp_dtype(device: torch.device, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype for training steps, or None for plain fp32 (weights always stay fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        from ..engine.device import cpu_supports_bf16

        # bf16 doubles the speed of oneDNN convolutions where the CPU runs it natively; emulated it is slower.
        return torch.bfloat16 if cpu_supports_bf16() else None
    return None


class TrainingStep:
    """One optimizer step: forward under autocast where it pays, the loss, backward (scaled on CUDA fp16), update."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        precision: str,
        edge_weight: float = 0.0,
    ) -> None:
        self.model, self.optimizer, self.device = model, optimizer, device
        self.edge_weight = edge_weight
        self.amp_dtype = training_amp_dtype(device, precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None

    @property
    def precision_name(self) -> str:
        return str(self.amp_dtype).replace("torch.", "") if self.amp_dtype is not None else "fp32"

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, heads: Sequence[str], loss_kind: str = "bce"
    ) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            logits = self.model(x)
        loss = compute_loss(logits, y, w, heads, loss_kind, self.edge_weight)
        if not torch.isfinite(loss):
            raise ModelError("The training loss became NaN/inf. Lower the learning rate (--lr) and try again.")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()


def parameter_groups(model: torch.nn.Module, config: TrainingConfig, imagenet: bool) -> list[dict[str, Any]]:
    """One group, or (ImageNet init) the encoder at a lower learning rate than the rest."""
    encoder = getattr(model, "encoder", None)
    if not imagenet or encoder is None:
        return [{"params": list(model.parameters()), "lr_factor": 1.0}]
    encoder_ids = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in encoder_ids]
    return [
        {"params": list(encoder.parameters()), "lr_factor": config.encoder_lr_factor},
        {"params": rest, "lr_factor": 1.0},
    ]
