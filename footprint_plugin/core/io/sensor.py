"""Is a raster radar (SAR) rather than optical (EO)? Read from the pixels and the metadata, not the name.

A SAR raster fed to an EO model gives "buildings" on speckle, so the dialog, Processing and the CLI
refuse that pairing with the reason found here (engine/pipeline.check_sensor).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

POLARISATIONS = ("HH", "HV", "VH", "VV")
_POLARISATION_WORD = re.compile(r"(?<![A-Za-z])(HH|HV|VH|VV)(?![A-Za-z])|POLARI[SZ]ATION", re.IGNORECASE)
SAMPLE_PIXELS = 256  # the sample read for the value test: at most this many pixels a side
DB_RANGE = (-60.0, 40.0)  # backscatter in decibels lies here; mostly below 0 dB over land
LINEAR_MAX_MEDIAN = 0.5  # linear sigma0/gamma0 is mostly far below 1...
LINEAR_MIN_TAIL = 4.0  # ...with a long speckle tail: 99th percentile / median


def sar_reason(
    dtype: str, band_count: int, labels: Sequence[str] = (), sample: Optional[np.ndarray] = None
) -> Optional[str]:
    """Why a raster looks like SAR (in a user's words), or None when it looks optical.

    dtype: the bands' data type (numpy/GDAL name); labels: band descriptions and metadata texts;
    sample: a (bands, rows, cols) read of the pixels, NaN or masked where nodata.
    """
    if np.dtype(dtype).kind == "c" or dtype.lower().startswith("complex"):
        return "its pixels are complex numbers (single-look complex SAR)"
    found = sorted({m.group(1).upper() for m in map(_POLARISATION_WORD.search, labels) if m and m.group(1)})
    if found or any(_POLARISATION_WORD.search(text) for text in labels):
        return "its metadata names radar polarisations" + (f" ({', '.join(found)})" if found else "")
    if np.dtype(dtype).kind != "f" or sample is None or band_count > 4:
        return None
    values = np.ma.masked_invalid(np.ma.asarray(sample, dtype=np.float64)).compressed()
    values = values[values != 0.0]  # 0 is the usual nodata of SAR products
    if values.size < 100:
        return None
    median = float(np.median(values))
    if np.mean(values < 0) > 0.5 and DB_RANGE[0] <= values.min() and values.max() <= DB_RANGE[1]:
        return f"its values look like radar backscatter in dB (median {median:.1f})"
    if band_count <= 2 and values.min() >= 0 and 0 < median < LINEAR_MAX_MEDIAN:
        if float(np.percentile(values, 99)) / median >= LINEAR_MIN_TAIL:
            return f"its values look like linear radar backscatter (median {median:.3g}, long speckle tail)"
    return None


def raster_sar_reason(path: Union[str, Path]) -> Optional[str]:
    """sar_reason for a raster file: its dtype, band descriptions, metadata and a small sample read."""
    from rasterio.enums import Resampling

    from .raster_io import HEADS_TAG, open_raster

    with open_raster(path) as dataset:
        tags = dataset.tags()
        if HEADS_TAG in tags:
            return None  # our own probability raster
        labels = [d for d in dataset.descriptions if d]
        labels += [f"{k}={v}" for k, v in tags.items() if len(str(v)) < 200]
        for band in range(1, dataset.count + 1):
            labels += [f"{k}={v}" for k, v in dataset.tags(band).items() if len(str(v)) < 200]
        dtype, count = dataset.dtypes[0], dataset.count
        sample = None
        if np.dtype(dtype).kind == "f" and count <= 4:
            scale = max(1.0, max(dataset.width, dataset.height) / SAMPLE_PIXELS)
            shape = (count, max(1, int(dataset.height / scale)), max(1, int(dataset.width / scale)))
            sample = dataset.read(out_shape=shape, masked=True, resampling=Resampling.nearest)
    return sar_reason(dtype, count, labels, sample)


def sar_refusal(raster_name: str, reason: str, model_name: str, sar_models: Sequence[str] = ()) -> str:
    """The message for an EO model asked to run on a SAR-looking raster: what to do instead."""
    text = (
        f"{raster_name} looks like a radar (SAR) image: {reason}. The model {model_name} is for optical (EO) "
        "imagery and would mistake radar speckle for buildings. "
    )
    if sar_models:
        return text + f"Pick a SAR model instead: {', '.join(sar_models)}."
    return text + (
        "No SAR model is installed. Train one on your SAR imagery with your building polygons "
        "(Plugins > Building Footprints > Train / fine-tune model…, or footprint:trainmodel), or import a "
        "SpaceNet 6-style model (Model manager > Import SpaceNet 6 baseline)."
    )
