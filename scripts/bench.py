"""`make bench`: run every benchmark script and print their tables (figures, never pass/fail)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = (
    "bench_inference.py",
    "bench_polygons.py",
    "bench_training.py",
    "bench_batch.py",
    "bench_memory.py",
    "bench_finetune.py",
)


def main(argv: list[str]) -> int:
    import torch

    print(
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
    )
    failures = 0
    for script in BENCHMARKS:
        path = ROOT / "scripts" / script
        if not path.exists():
            continue
        print(f"\n=== {script} {' '.join(argv)}", flush=True)
        failures += subprocess.call([sys.executable, str(path), *argv], cwd=ROOT) != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
