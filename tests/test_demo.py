"""`make demo` end to end: the bundled model through footprint:detectbuildings on the real SpaceNet sample.

The sample comes from ../shared here (the same bytes the solaris wheel carries), so the test needs no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_detects_buildings_on_the_real_sample(tmp_path, shared_data):
    area = shared_data / "eo" / "spacenet4_atlanta_pan"
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copyfile(area / "tiles" / "sample_geotiff.tif", cache / "sample_geotiff.tif")
    shutil.copyfile(area / "labels.geojson", cache / "geotiff_labels.geojson")
    out = tmp_path / "out"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--cache", str(cache), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    found = int(re.search(r"Buildings found: (\d+)", run.stdout).group(1))
    scores = re.search(r"F1 ([0-9.]+) \(TP (\d+), FP (\d+), FN (\d+)\)", run.stdout)
    assert scores, run.stdout
    f1, tp, fp, fn = float(scores.group(1)), *map(int, scores.groups()[1:])
    assert found == tp + fp and tp + fn == 43  # the sample's 43 labelled buildings
    # Held-out Atlanta is hard for the bundled model (F1 at IoU 0.5 near 0), but most of its detections must
    # lie on real houses: version 1.0 had 3 of 16, version 1.1 has 9 of 21. A regression below 5 fails here.
    loose = re.search(r"Looser match \(IoU >= 0.1.*\): (\d+) of (\d+) detections", run.stdout)
    assert loose and int(loose.group(2)) == found, run.stdout
    assert int(loose.group(1)) >= 5, run.stdout
    for name in ("buildings.gpkg", "probability.tif", "quicklook.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.partial*")) and not list(out.glob(".*tmp*"))
    print(f"demo: {found} buildings, F1 {f1:.3f} (TP {tp}, FP {fp}, FN {fn})")
