"""Batch jobs never destroy what the user did not ask them to, and never report a failure as success (issue 20).

Real runs of the engine and the CLI on the 2 x 2 tiles of tests/test_batch_job.py: job-folder ownership,
cleanup of only the job's own files, outputs refused inside the job folder, locks against a second run,
resume that verifies inputs and blocks by content, failed blocks as a non-zero exit, bounded Dask
connects, and jobs refused up front when they cannot fit the disk or run for hours unconfirmed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_batch_job import BLOCK, canonical, make_roof_model, read_layer, run_serial_job, write_tiles


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("safety")
    return make_roof_model(folder / "models"), write_tiles(folder / "tiles")


def _run(tiles, out, card_path, **options):
    notes: list[str] = []
    return run_serial_job(tiles, out, card_path, on_info=notes.append, **options), notes


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    card_path, tiles = data
    result, _notes = _run(tiles, tmp_path_factory.mktemp("ref") / "ref.gpkg", card_path)
    return canonical(result.geometries)


def _sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _cli(args: list[str], prelude: str = "") -> list[str]:
    code = f"{prelude}import sys; from footprint_plugin.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "batch", *args]


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **extra}


def _args(tiles: Path, out: Path, card_path: Path, *more: str) -> list[str]:
    common = ["--model", str(card_path), "--workers", "0", "--block-size", str(BLOCK), "--device", "cpu"]
    return [str(tiles), "--out", str(out), *common, "--precision", "fp32", "--min-area", "5", *more]


# --------------------------------------------------------------------------- the job folder belongs to its job


def test_a_folder_that_is_not_a_job_is_refused_and_left_untouched(data, tmp_path):
    from footprint_plugin.core.common.errors import InputError, OutputError

    card_path, tiles = data
    before = _sha(tiles)
    # The tiles' own folder, even one holding a file named job.json, is never a job folder.
    (tmp_path / "T").mkdir()
    for tile in tiles.iterdir():
        shutil.copy(tile, tmp_path / "T" / tile.name)
    (tmp_path / "T" / "job.json").write_text("{}")
    with pytest.raises(InputError, match="inside the job folder"):
        _run(tmp_path / "T", tmp_path / "o.gpkg", card_path, job_dir=tmp_path / "T")
    assert sorted(p.name for p in (tmp_path / "T").iterdir()) == sorted([*before, "job.json"])
    # A folder of other files beside the tiles: refused, nothing written into it.
    other = tmp_path / "other"
    other.mkdir()
    (other / "job.json").write_text('{"version": 1}')
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a batch job folder of this plugin"):
        _run(tiles, tmp_path / "o.gpkg", card_path, job_dir=other)
    assert _tree(other) == ["job.json", "notes.txt"] and _sha(tiles) == before
    assert not (tmp_path / "o.gpkg").exists() and not (tmp_path / "o.gpkg.lock").exists()


def test_outputs_inside_the_job_folder_are_refused(data, tmp_path):
    from footprint_plugin.core.common.errors import OutputError

    card_path, tiles = data
    job = tmp_path / "J"
    job.mkdir()
    with pytest.raises(OutputError, match="inside the job folder"):
        _run(tiles, job / "b.gpkg", card_path, job_dir=job)
    with pytest.raises(OutputError, match="The probability folder .* inside the job folder"):
        _run(tiles, tmp_path / "b.gpkg", card_path, job_dir=job, probability_dir=job / "prob")
    assert _tree(tmp_path) == ["J"]


def test_cleanup_deletes_only_the_files_the_job_made(data, reference, tmp_path):
    card_path, tiles = data
    mine = tmp_path / "mine"
    mine.mkdir()  # an existing empty folder: the job uses it, and leaves it (empty) after success
    result, _notes = _run(tiles, tmp_path / "a.gpkg", card_path, job_dir=mine)
    assert canonical(result.geometries) == reference and result.job_dir is None
    assert mine.is_dir() and _tree(mine) == []
    # A kept job folder that the user then puts files into: a new run removes only the job's files.
    kept, _notes = _run(tiles, tmp_path / "b.gpkg", card_path, keep_job=True)
    job = tmp_path / "b.gpkg.job"
    assert kept.job_dir == job and (job / "footprint_job.json").exists()
    (job / "readme.txt").write_text("mine")
    (job / "blocks" / "my_block.tif").write_bytes(b"mine")
    (tmp_path / "b.gpkg").unlink()
    again, _notes = _run(tiles, tmp_path / "b.gpkg", card_path)
    assert canonical(again.geometries) == reference
    assert _tree(job) == ["blocks", "blocks/my_block.tif", "readme.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gpkg", "b.gpkg", "b.gpkg.job", "mine"]


def test_a_live_lock_stops_a_second_run_and_a_dead_ones_lock_is_taken_over(data, reference, tmp_path):
    from footprint_plugin.core.common.errors import OutputError

    card_path, tiles = data
    job = tmp_path / "job"
    job.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"kind": "footprint_plugin batch lock", "pid": sleeper.pid, "host": socket.gethostname()}
        (job / "footprint_job.lock").write_text(json.dumps({**lock, "started": "today", "token": "x"}))
        with pytest.raises(OutputError, match=f"Another batch run \\(process {sleeper.pid} on "):
            _run(tiles, tmp_path / "o.gpkg", card_path, job_dir=job)
        assert _tree(job) == ["footprint_job.lock"] and not (tmp_path / "o.gpkg").exists()
        assert not (tmp_path / "o.gpkg.lock").exists()  # the output's own lock is released
    finally:
        sleeper.kill()
        sleeper.wait()
    # The same lock once its process is gone: taken over, with a note.
    result, notes = _run(tiles, tmp_path / "o.gpkg", card_path, job_dir=job)
    assert canonical(result.geometries) == reference
    assert any("took over the lock" in n and str(sleeper.pid) in n for n in notes)
    assert _tree(job) == []


def test_two_runs_on_one_output_cannot_destroy_each_other(data, reference, tmp_path):
    card_path, tiles = data
    out = tmp_path / "o.gpkg"
    first = subprocess.Popen(
        _cli(_args(tiles, out, card_path, "--json")),
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "o.gpkg.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # holds its locks while the second one starts
        second = subprocess.run(
            _cli(_args(tiles, out, card_path, "--job-dir", str(tmp_path / "job2"))),
            env=_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=180)
    assert second.returncode == 2 and "Another batch run (process" in second.stderr
    assert "Traceback" not in second.stderr and not (tmp_path / "job2").exists()
    assert first.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["blocks_failed"] == []
    assert canonical(read_layer(out).geometries) == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gpkg"]


# --------------------------------------------------------------------------- resume verifies its work


def test_resume_recomputes_changed_or_cut_blocks_and_refuses_changed_inputs(data, reference, tmp_path):
    card_path, tiles = data
    folder = tmp_path / "tiles"
    shutil.copytree(tiles, folder)
    out = tmp_path / "o.gpkg"
    args = _args(folder, out, card_path, "--json")
    done = subprocess.run(_cli(args + ["--keep-job"]), env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    job = tmp_path / "o.gpkg.job"
    blocks = sorted((job / "blocks").glob("*.tif"))
    assert len(blocks) == 4
    data0 = blocks[0].read_bytes()
    blocks[0].write_bytes(data0[: len(data0) // 2])  # cut short
    data1 = bytearray(blocks[1].read_bytes())
    data1[-100] ^= 0xFF  # same size, other bytes
    blocks[1].write_bytes(bytes(data1))
    for layer in (job / "polygons").glob("*.gpkg"):
        layer.unlink()
    out.unlink()
    resumed = subprocess.run(_cli(args + ["--resume"]), env=_env(), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr and "2 block file(s) did not match the job's record" in resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert (summary["blocks_resumed"], summary["blocks_run"]) == (2, 2)
    assert canonical(read_layer(out).geometries) == reference and not job.exists()

    # A tile edited in place, same size, with its modification time put back: the resume is refused.
    first = subprocess.run(_cli(args + ["--keep-job", "--overwrite"]), env=_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    tile = folder / "t_1_1.tif"
    stat = tile.stat()
    edited = bytearray(tile.read_bytes())
    edited[len(edited) // 2] ^= 0x01
    tile.write_bytes(bytes(edited))
    os.utime(tile, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    refused = subprocess.run(_cli(args + ["--resume", "--overwrite"]), env=_env(), capture_output=True, text=True)
    assert refused.returncode == 2 and "t_1_1.tif changed" in refused.stderr and "Traceback" not in refused.stderr
    assert json.loads(refused.stdout.strip().splitlines()[-1])["exit"] == 2
    assert len(list((job / "blocks").glob("*.tif"))) == 4  # the refused resume touched nothing


# --------------------------------------------------------------------------- failures are failures


def test_failed_blocks_raise_name_their_tiles_and_a_resume_finishes(data, reference, tmp_path):
    from footprint_plugin.core.batch.options import BlocksFailedError

    card_path, tiles = data
    job = tmp_path / "job"
    broken: list[bool] = []

    def break_the_mosaic(status) -> None:
        # After the first block, the mosaic the other blocks read becomes unreadable (as a share that drops).
        if status.blocks_done == 1 and not broken:
            broken.append(True)
            for vrt in (job / "mosaics").glob("*.vrt"):
                vrt.write_text("not a VRT")

    with pytest.raises(BlocksFailedError) as error:
        _run(tiles, tmp_path / "o.gpkg", card_path, job_dir=job, on_status=break_the_mosaic)
    message = str(error.value)
    assert message.startswith("3 of 4 blocks failed, so no output was written:")
    assert "t_0_0+3__r0001_c0001 (tiles t_1_1.tif)" in message and "--resume" in message
    assert not (tmp_path / "o.gpkg").exists() and len(list((job / "blocks").glob("*.tif"))) == 1
    assert not (job / "footprint_job.lock").exists()
    result, _notes = _run(tiles, tmp_path / "o.gpkg", card_path, job_dir=job, resume=True)
    assert (result.blocks_resumed, result.blocks_run, result.blocks_failed) == (1, 3, [])
    assert canonical(result.geometries) == reference and not job.exists()


def test_cli_exits_2_when_blocks_fail_and_writes_nothing(data, tmp_path):
    card_path, tiles = data
    out = tmp_path / "o.gpkg"
    # Blocks right of the first column cannot read their pixels (an I/O error of a network share).
    prelude = (
        "from footprint_plugin.core.batch import mosaic as m; cut = m.write_window_vrt\n"
        "def failing(src, window, out):\n"
        "    if window[0] > 0: raise RuntimeError('Read error: TIFFReadEncodedTile() failed')\n"
        "    return cut(src, window, out)\n"
        "m.write_window_vrt = failing\n"
    )
    done = subprocess.run(
        _cli(_args(tiles, out, card_path, "--json"), prelude=prelude), env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "2 of 4 blocks failed, so no output was written" in done.stderr
    assert "t_0_0+3__r0000_c0001 (tiles t_0_1.tif, t_1_1.tif): RuntimeError: Read error" in done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["exit"] == 2
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["o.gpkg.job"]
    assert len(list((tmp_path / "o.gpkg.job" / "blocks").glob("*.tif"))) == 2


# --------------------------------------------------------------------------- Dask: bounded, stoppable


@pytest.fixture
def silent_scheduler():
    """A port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                accepted.append(server.accept()[0])
        except OSError:  # closed at the end of the test
            return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in accepted:
        connection.close()


def test_a_silent_scheduler_times_out_and_leaves_nothing(data, silent_scheduler, tmp_path):
    pytest.importorskip("distributed")
    card_path, tiles = data
    out = tmp_path / "o.gpkg"
    args = _args(tiles, out, card_path, "--json")
    args[args.index("--workers") : args.index("--workers") + 2] = ["--scheduler", silent_scheduler]
    prelude = "import footprint_plugin.core.batch.distributed as d; d.CONNECT_TIMEOUT_S = 3\n"
    started = time.monotonic()
    done = subprocess.run(_cli(args, prelude=prelude), env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "did not answer within 3 s" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and time.monotonic() - started < 60
    assert json.loads(done.stdout.strip().splitlines()[-1])["exit"] == 2
    assert _tree(tmp_path) == []  # no job folder, no lock, no output


def test_sigterm_ends_a_run_waiting_for_a_scheduler(data, silent_scheduler, tmp_path):
    pytest.importorskip("distributed")
    card_path, tiles = data
    args = _args(tiles, tmp_path / "o.gpkg", card_path)
    args[args.index("--workers") : args.index("--workers") + 2] = ["--scheduler", silent_scheduler]
    process = subprocess.Popen(_cli(args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any("Connecting to" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("Connecting to" in line for line in lines), lines
    time.sleep(1.0)  # well inside the 30 s connect
    stopped = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 128 + signal.SIGTERM
    reader.join(5)
    process.stdout.close()
    process.stderr.close()
    assert time.monotonic() - stopped < 15 and "Traceback" not in "".join(lines)
    assert _tree(tmp_path) == []


# --------------------------------------------------------------------------- refused up front


def test_a_job_larger_than_the_free_disk_is_refused_before_any_work(data, tmp_path):
    from footprint_plugin.core.common.errors import OutputError

    card_path, tiles = data
    source = tiles / "t_0_0.tif"
    free = shutil.disk_usage(tmp_path).free
    side = int((40 * free) ** 0.5) + 1  # even at the best compression its probabilities cannot fit
    huge = tmp_path / "inputs" / "huge.vrt"
    huge.parent.mkdir()
    huge.write_text(
        f'<VRTDataset rasterXSize="{side}" rasterYSize="{side}"><SRS>EPSG:32631</SRS>'
        "<GeoTransform>600000, 0.5, 0, 5750000, 0, -0.5</GeoTransform>"
        + "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="0">{source}'
            f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
            for b in (1, 2, 3)
        )
        + "</VRTDataset>"
    )
    with pytest.raises(OutputError, match="do not fit the disk"):
        _run(huge, tmp_path / "o.gpkg", card_path, block_size=side // 4 + 1)
    assert _tree(tmp_path) == ["inputs", "inputs/huge.vrt"]


def test_a_job_estimated_at_hours_needs_yes(data, tmp_path):
    from footprint_plugin.core.engine.estimate import _speed_key
    from footprint_plugin.core.zoo.modelcard import load_card

    card_path, tiles = data
    cache = tmp_path / "cache"
    (cache / "footprint_plugin").mkdir(parents=True)
    slow = {_speed_key(load_card(card_path), "cpu", 64): 1e-5}  # model megapixels per second, as if measured
    (cache / "footprint_plugin" / "speed.json").write_text(json.dumps(slow))
    out = tmp_path / "run" / "o.gpkg"
    out.parent.mkdir()
    args = _args(tiles, out, card_path, "--json")
    refused = subprocess.run(_cli(args), env=_env(FOOTPRINT_CACHE_DIR=str(cache)), capture_output=True, text=True)
    assert refused.returncode == 2 and "estimated at hours" in refused.stderr and "--yes" in refused.stderr
    assert " h at " in refused.stderr and "Traceback" not in refused.stderr
    assert _tree(out.parent) == []
    started = subprocess.run(
        _cli(args + ["--yes"]), env=_env(FOOTPRINT_CACHE_DIR=str(cache)), capture_output=True, text=True
    )
    assert started.returncode == 0, started.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.gpkg"]
