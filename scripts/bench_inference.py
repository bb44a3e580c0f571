#!/usr/bin/env python3
"""Inference benchmark: prints one table row per architecture and precision.

Columns: end-to-end MP/s on a synthetic 4096 x 4096 x 3 raster (read, scale, infer, blend,
write with overviews; 512 px tiles, 64 px = 12.5 % overlap), model-only MP/s (batches of
512 px tiles), peak RSS of the end-to-end run (each run is a fresh subprocess), the model's
FLOPs per megapixel counted here, and the matmul GFLOP/s measured in this same run, which
give the "physical limit" MP/s a perfectly efficient implementation could reach.

    python scripts/bench_inference.py                 # all architectures, CPU
    python scripts/bench_inference.py --quick --arch unet_mobilenetv2
    python scripts/bench_inference.py --big           # 20000 x 20000 x 3 raster, peak RSS check
    PYTHONPATH=DIR python scripts/bench_inference.py --onnx --arch unet_efficientnet_lite0 \
        --card model_zoo/footprint_eo_lite0.json   # ONNX Runtime against torch

Rasters are written to /tmp (never into the repository). Weights are random (speed does not
depend on them) unless --card names a trained model; the last column compares bf16 with fp32 on
one batch (mask IoU / largest probability difference), the check inference itself makes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TILE, OVERLAP = 512, 64
BENCH_DIR = Path(os.environ.get("FOOTPRINT_BENCH_DIR", tempfile.gettempdir())) / "footprint_bench"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_raster(size: int) -> Path:
    """A tiled, deflate-compressed synthetic RGB GeoTIFF (cached between runs)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"rgb_{size}.tif"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    block = rng.normal(100, 20, (3, 512, 512)).clip(0, 255).astype(np.uint8)
    block[:, 100:220, 80:300] = 200  # a 'roof'
    tmp = path.with_suffix(".partial.tif")
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(600000, 5750000, 0.5, 0.5),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        photometric="RGB",
    )
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, size, 512):
            for col in range(0, size, 512):
                h, w = min(512, size - row), min(512, size - col)
                dst.write(np.roll(block, (row // 512) * 37, axis=2)[:, :h, :w], window=Window(col, row, w, h))
    os.replace(tmp, path)
    return path


def repeat_tile_vrt(source: Path, width: int, height: int, path: Path) -> Path:
    """A width x height VRT mosaic that repeats one GeoTIFF (cheap to create, real GDAL reads), its georeferencing."""
    import rasterio

    with rasterio.open(source) as ds:
        gt, wkt = ds.transform.to_gdal(), ds.crs.to_wkt()
        tile_w, tile_h, count = ds.width, ds.height, ds.count
    bands = []
    for band in range(1, count + 1):
        sources = []
        for row in range(0, height, tile_h):
            for col in range(0, width, tile_w):
                w, h = min(tile_w, width - col), min(tile_h, height - row)
                sources.append(
                    f'<SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename>'
                    f"<SourceBand>{band}</SourceBand>"
                    f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                    f'<DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}"/></SimpleSource>'
                )
        bands.append(f'<VRTRasterBand dataType="Byte" band="{band}">{"".join(sources)}</VRTRasterBand>')
    path.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{wkt}</SRS>'
        f"<GeoTransform>{', '.join(repr(v) for v in gt)}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    return path


def make_big_vrt(size: int = 20000) -> Path:
    """A size x size x 3 VRT mosaic that repeats one 2048 px tiled GeoTIFF."""
    return repeat_tile_vrt(make_raster(2048), size, size, BENCH_DIR / f"rgb_{size}.vrt")


def _given_card(architecture: str):
    """The --card model (FOOTPRINT_BENCH_CARD) when it is this architecture on 3 bands, else None."""
    card_path = os.environ.get("FOOTPRINT_BENCH_CARD")
    if not card_path:
        return None
    from footprint_plugin.core.zoo.modelcard import load_card

    card = load_card(card_path)
    return card if card.architecture == architecture and card.in_channels == 3 else None


def bench_card(architecture: str):
    """The --card model's own card (its heads, scaling, tiles), or a one-head card for random weights."""
    from footprint_plugin.core.zoo.modelcard import ModelCard

    given = _given_card(architecture)
    if given is not None:
        return given
    return ModelCard(
        name=f"bench_{architecture}",
        architecture=architecture,
        in_channels=3,
        out_channels=1,
        band_roles=["red", "green", "blue"],
        tile_size=TILE,
        overlap=OVERLAP,
        gsd_m=0.5,
    )


def random_model(architecture: str) -> torch.nn.Module:
    """Random weights, or the trained weights of --card (FOOTPRINT_BENCH_CARD) when it is this architecture."""
    from footprint_plugin.core.models import create_model

    given = _given_card(architecture)
    if given is not None:
        from footprint_plugin.core.zoo.weights import load_model

        return load_model(given)
    torch.manual_seed(0)
    return create_model(architecture, 3, 1).eval()


def count_gflop_per_mp(model: torch.nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, TILE, TILE)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9 / (TILE * TILE / 1e6)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def model_only(architecture: str, precision: str, device: str, reps: int, batch: int = 2) -> dict:
    from footprint_plugin.core.engine.device import select_device
    from footprint_plugin.core.engine.runner import TileRunner, prepare_model

    choice = select_device(device)
    net = prepare_model(random_model(architecture), choice)
    runner = TileRunner(net, choice, precision, "none", False, True)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (batch, 3, TILE, TILE)).astype(np.float32)
    runner.run(x)  # warm-up: oneDNN builds its kernels on the first call
    if choice.kind == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        out = runner.run(x)
    seconds = (time.perf_counter() - start) / reps
    result = {"model_mps": batch * TILE * TILE / 1e6 / seconds}
    if precision == "bf16":
        reference = runner.run(x, "fp32")
        from footprint_plugin.core.engine.precision import bf16_agreement

        result["bf16_iou"], result["bf16_max_diff"] = bf16_agreement(reference, out, 0.5)
    return result


def onnx_runtime_row(architecture: str, threads: int, reps: int, batch: int = 2) -> None:
    """ONNX Runtime CPU against torch (fp32 and bf16) on the same batch: wall MP/s, MP per CPU second, mask IoU.

    Needs onnxruntime and onnx importable (not dependencies of the plugin), e.g. installed into a scratch
    folder on PYTHONPATH. Real imagery (Joplin) when the data pack is there, so the IoU means something.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: pip install --target DIR onnxruntime onnx, then PYTHONPATH=DIR")
        return
    from footprint_plugin.core.engine.device import select_device
    from footprint_plugin.core.engine.precision import mask_iou
    from footprint_plugin.core.engine.runner import TileRunner, prepare_model

    torch.set_num_threads(threads)
    model = random_model(architecture)
    x = _real_batch(batch)
    path = BENCH_DIR / f"{architecture}.onnx"
    torch.onnx.export(model, torch.from_numpy(x), str(path), input_names=["x"], opset_version=17, dynamo=False)
    settings = ort.SessionOptions()
    settings.intra_op_num_threads, settings.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
    choice = select_device("cpu")
    runner = TileRunner(prepare_model(model, choice), choice, "fp32", "none", False, True)
    runs = {
        "torch fp32": lambda: runner.run(x, "fp32"),
        "torch bf16": lambda: runner.run(x, "bf16"),
        f"onnxruntime {ort.__version__} fp32": lambda: 1.0 / (1.0 + np.exp(-session.run(None, {"x": x})[0])),
    }
    outputs, rows = {}, []
    for name, run in runs.items():
        run()  # warm-up
        wall, cpu = [], []
        for _ in range(reps):
            started, cpu_started = time.perf_counter(), time.process_time()
            outputs[name] = run()
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        megapixels = batch * TILE * TILE / 1e6
        rows.append((name, megapixels / min(wall), megapixels / min(cpu)))
    reference = outputs["torch fp32"]
    print(f"\nONNX Runtime against torch, {architecture}, {threads} threads, load average {os.getloadavg()[0]:.2f}")
    print("| backend | model MP/s (wall, best) | MP per CPU second | mask IoU vs torch fp32 |")
    print("|---|---|---|---|")
    for name, wall_rate, cpu_rate in rows:
        print(f"| {name} | {wall_rate:.2f} | {cpu_rate:.2f} | {mask_iou(reference, outputs[name], 0.5):.4f} |")


def _real_batch(batch: int) -> np.ndarray:
    """Tiles of real imagery scaled 2-98 % (random values when the data pack is absent)."""
    import rasterio

    source = REPO.parent / "shared" / "data" / "eo" / "xview2_joplin_pre" / "mosaic.vrt"
    if not source.exists():
        return np.random.default_rng(1).uniform(0, 1, (batch, 3, TILE, TILE)).astype(np.float32)
    with rasterio.open(source) as ds:
        image = ds.read(window=((300, 300 + TILE), (0, batch * TILE))).astype(np.float32)
    low, high = (np.percentile(image, q, axis=(1, 2), keepdims=True) for q in (2, 98))
    image = np.clip((image - low) / np.maximum(high - low, 1e-6), 0, 1)
    return np.stack([image[:, :, i * TILE : (i + 1) * TILE] for i in range(batch)]).astype(np.float32)


def end_to_end(architecture: str, precision: str, device: str, raster: Path) -> dict:
    from footprint_plugin.core.engine.inference import InferenceOptions, predict_raster

    out = BENCH_DIR / f"prob_{architecture}_{precision}.tif"
    options = InferenceOptions(device=device, precision=precision)
    result = predict_raster(raster, bench_card(architecture), out, options, model=random_model(architecture))
    out.unlink(missing_ok=True)
    return {
        "e2e_mps": result.megapixels / result.seconds,
        "seconds": result.seconds,
        "megapixels": result.megapixels,
        "peak_rss_mb": peak_rss_mb(),
        "precision": result.precision,
        "device": result.device_name,
    }


def child(args: argparse.Namespace) -> None:
    args.precision = args.precision[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child == "e2e":
        raster = make_big_vrt() if args.big else make_raster(args.size)
        print(json.dumps(end_to_end(args.arch[0], args.precision, args.device, raster)))
    else:
        print(json.dumps(model_only(args.arch[0], args.precision, args.device, args.reps)))


def run_child(kind: str, arch: str, precision: str, args: argparse.Namespace, big: bool = False) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--arch",
        arch,
        "--precision",
        precision,
        "--device",
        args.device,
        "--size",
        str(args.size),
        "--reps",
        str(args.reps),
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if big:
        command.append("--big")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-3000:])
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from footprint_plugin.core.engine.device import cpu_supports_bf16, select_device
    from footprint_plugin.core.models import ARCHITECTURES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--quick", action="store_true", help="2048 px raster and fewer repetitions")
    parser.add_argument("--big", action="store_true", help="only the 20000 x 20000 x 3 peak-RSS run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=None, help="default: fp32, plus bf16 where native")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--card", help="a trained model card (3 bands, 1 head): its weights replace random ones")
    parser.add_argument("--onnx", action="store_true", help="only ONNX Runtime against torch (model only)")
    parser.add_argument("--child", choices=["e2e", "model"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.card:
        os.environ["FOOTPRINT_BENCH_CARD"] = str(Path(args.card).resolve())
    if args.child:
        child(args)
        return
    if args.onnx:
        onnx_runtime_row(args.arch[0], args.threads or torch.get_num_threads(), max(args.reps, 3))
        return
    if args.quick:
        args.size, args.reps = min(args.size, 2048), 2
    if args.threads:
        torch.set_num_threads(args.threads)
    choice = select_device(args.device)
    native_bf16 = cpu_supports_bf16() if choice.kind == "cpu" else choice.kind == "cuda"
    precisions = args.precision or (["fp32", "bf16"] if native_bf16 else ["fp32"])
    print(f"device: {choice.name}  {choice.note}")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, "
        f"native bf16: {native_bf16}"
    )

    if args.big:
        arch = args.arch[0] if len(args.arch) == 1 else "unet_mobilenetv2"
        precision = precisions[-1]
        make_big_vrt()
        row = run_child("e2e", arch, precision, args, big=True)
        print(
            f"20000 x 20000 x 3 uint8 VRT, {arch} {row.get('precision')}: {row.get('seconds', 0):.0f} s, "
            f"{row.get('e2e_mps', 0):.2f} MP/s, peak RSS {row.get('peak_rss_mb', 0):.0f} MB "
            f"({'under' if row.get('peak_rss_mb', 1e9) < 3072 else 'OVER'} 3 GB)"
        )
        return

    make_raster(args.size)
    gflops = {"fp32": matmul_gflops(torch.float32)}
    if "bf16" in precisions:
        gflops["bf16"] = matmul_gflops(torch.bfloat16)
    print("matmul GFLOP/s (2048^3, same run): " + ", ".join(f"{k} {v:.0f}" for k, v in gflops.items()))
    print(f"end to end: {args.size} x {args.size} x 3 uint8 tiled GeoTIFF, tiles {TILE} px, overlap {OVERLAP} px")
    header = (
        f"{'architecture':22} {'prec':5} {'e2e MP/s':>9} {'model MP/s':>10} {'peak RSS MB':>11} "
        f"{'GFLOP/MP':>9} {'limit MP/s':>10} {'model/limit':>11} {'bf16 IoU/diff':>14}"
    )
    print(header)
    print("-" * len(header))
    for arch in args.arch:
        flop = count_gflop_per_mp(random_model(arch))
        for precision in precisions:
            model = run_child("model", arch, precision, args)
            e2e = run_child("e2e", arch, precision, args)
            limit = gflops.get(precision, gflops["fp32"]) / flop
            iou = model.get("bf16_iou")
            diff = None if iou is None else f"{iou:.3f} / {model['bf16_max_diff']:.2f}"
            print(
                f"{arch:22} {e2e.get('precision', precision):5} {e2e.get('e2e_mps', float('nan')):9.2f} "
                f"{model.get('model_mps', float('nan')):10.2f} {e2e.get('peak_rss_mb', float('nan')):11.0f} "
                f"{flop:9.1f} {limit:10.2f} {model.get('model_mps', float('nan')) / limit:11.0%} "
                f"{diff or '':>14}",
                flush=True,
            )


if __name__ == "__main__":
    main()
