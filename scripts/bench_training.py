#!/usr/bin/env python3
"""Training-step benchmark: seconds per step and chips per second, fp32 against the `auto` precision.

One step = forward, the real loss (BCE + Dice per head), backward and an AdamW update on a batch of
random 256 px chips; data loading is not included. `auto` is what `train`/`finetune` use by default:
fp16 autocast on CUDA, bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.

    python scripts/bench_training.py [--arch unet_mobilenetv2] [--batch 8] [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="unet_mobilenetv2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chip", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    # make bench passes the inference benchmark's options to every script; ignore the ones not ours.
    args, _unknown = parser.parse_known_args(argv)

    import torch

    from footprint_plugin.core.learning.training import TrainingStep, _select_device
    from footprint_plugin.core.models import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = _select_device(args.device)
    heads = ["footprint", "boundary", "contact"]
    x = torch.rand(args.batch, 3, args.chip, args.chip, device=device)
    y = (torch.rand(args.batch, 3, args.chip, args.chip, device=device) > 0.7).float()
    w = torch.ones(args.batch, 1, args.chip, args.chip, device=device)
    print(f"{args.arch}, batch {args.batch} x {args.chip} px, {args.threads} threads, device {device.type}")
    print(f"{'precision':<10} {'autocast':<10} {'s/step':>8} {'chips/s':>8}")
    for precision in ("fp32", "auto"):
        model = create_model(args.arch, 3, 3).to(device).train()
        step = TrainingStep(model, torch.optim.AdamW(model.parameters(), lr=1e-4), device, precision)
        timings = []
        for index in range(args.steps + 1):
            started = time.perf_counter()
            step(x, y, w, heads)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if index:  # the first step pays for oneDNN/cuDNN kernel selection
                timings.append(time.perf_counter() - started)
        seconds = sorted(timings)[len(timings) // 2]
        print(f"{precision:<10} {step.precision_name:<10} {seconds:>8.3f} {args.batch / seconds:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
