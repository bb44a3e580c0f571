"""`python -m footprint_plugin evaluate`: known answer, JSON summary, outputs, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import shapely

from footprint_plugin.cli import main
from footprint_plugin.core.io.vector_io import read_polygons, write_polygons

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_evaluate_known_answer_json(shared_data, tmp_path, capsys):
    fixtures = shared_data / "eval_fixtures"
    code = main(
        [
            "evaluate",
            str(fixtures / "pred.geojson"),
            str(fixtures / "gt.geojson"),
            "--json",
            "--out-layers",
            str(tmp_path / "layers.gpkg"),
            "--report",
            str(tmp_path / "report.json"),
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["scores"]["tp"] == 8 and summary["scores"]["fp"] == 20 and summary["scores"]["fn"] == 20
    assert summary["scores"]["f1"] == 0.2857
    assert json.loads((tmp_path / "report.json").read_text())["scores"]["f1"] == 0.2857
    assert len(read_polygons(tmp_path / "layers.gpkg", layer="false_negatives").geometries) == 20


def test_evaluate_min_area_and_aoi_text_output(tmp_path, capsys):
    boxes = [shapely.box(600000 + 20 * i, 5750000, 600010 + 20 * i, 5750010) for i in range(3)]
    small = shapely.box(600000, 5750100, 600003, 5750103)
    write_polygons(tmp_path / "gt.gpkg", boxes + [small], [{}] * 4, "EPSG:32631")
    write_polygons(tmp_path / "pred.gpkg", boxes[:2], [{}] * 2, "EPSG:32631")
    write_polygons(tmp_path / "aoi.gpkg", [shapely.box(599990, 5749990, 600035, 5750200)], [{}], "EPSG:32631")
    code = main(
        [
            "evaluate",
            str(tmp_path / "pred.gpkg"),
            str(tmp_path / "gt.gpkg"),
            "--min-area",
            "20",
            "--aoi",
            str(tmp_path / "aoi.gpkg"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "TP 2  FP 0  FN 0" in out


def test_evaluate_missing_input_exits_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "none.gpkg"), str(tmp_path / "gt.gpkg")]) == 2
    assert "not found" in capsys.readouterr().err


def test_evaluate_as_a_process(shared_data, tmp_path):
    fixtures = shared_data / "eval_fixtures"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "footprint_plugin",
            "evaluate",
            str(fixtures / "pred.geojson"),
            str(fixtures / "gt.geojson"),
            "--json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["scores"]["fn"] == 20
