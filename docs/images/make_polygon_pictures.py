"""Make the pictures for docs: regularization before/after, and polygons over a real Banepa raster.

No trained model is needed: the probabilities are a stand-in made from the OSM labels (burned,
blurred and disturbed with smooth noise, with boundary/contact heads for the watershed), and the
captions say so.

    .venv/bin/python docs/images/make_polygon_pictures.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import shapely  # noqa: E402
from shapely import affinity  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from footprint_plugin.core.io.vector_io import read_polygons  # noqa: E402
from footprint_plugin.core.vectors.polygons import PolygonOptions, _shapes_to_polygons, polygonize_array  # noqa: E402
from footprint_plugin.core.vectors.regularize import regularize_polygon  # noqa: E402

OUT = Path(__file__).resolve().parent


def draw(ax, geom, **style) -> None:
    parts = getattr(geom, "geoms", [geom])
    for part in parts:
        ax.plot(*part.exterior.xy, **style)
        for ring in part.interiors:
            ax.plot(*ring.xy, **style)


def pixel_outline(shape, size: int = 200, seed: int = 0):
    """The outline a blurred, noisy mask of `shape` gives: what the polygonizer sees from a model."""
    from rasterio.features import rasterize
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    burned = rasterize([(shape, 1)], out_shape=(size, size), dtype="uint8").astype(np.float32)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 3) * 2.5
    prob = ndimage.gaussian_filter(burned, 2.0) + noise * 0.5
    labels, _ = ndimage.label(prob > 0.5)
    polygons, _ = _shapes_to_polygons(labels.astype(np.int32), 0, 0)
    return max(polygons, key=lambda p: p.area).simplify(0.75)


def regularization_picture(path: Path) -> None:
    shapes = {
        "rotated rectangle": affinity.rotate(shapely.box(50, 70, 150, 130), 27, origin="centroid"),
        "L-shape": affinity.rotate(
            shapely.Polygon([(40, 40), (160, 40), (160, 90), (95, 90), (95, 165), (40, 165)]), -12, origin="centroid"
        ),
        "U-shape": affinity.rotate(
            shapely.Polygon([(40, 50), (160, 50), (160, 150), (125, 150), (125, 95), (75, 95), (75, 150), (40, 150)]),
            8,
            origin="centroid",
        ),
        "round (kept)": shapely.Point(100, 100).buffer(60),
        "irregular (kept)": shapely.Polygon(
            [(40, 60), (110, 30), (170, 80), (140, 120), (165, 170), (70, 160), (60, 110)]
        ),
    }
    fig, axes = plt.subplots(1, len(shapes), figsize=(3.2 * len(shapes), 3.6))
    for seed, (ax, (name, truth)) in enumerate(zip(axes, shapes.items())):
        before = pixel_outline(truth, seed=seed)
        after, changed = regularize_polygon(before)
        ax.fill(*before.exterior.xy, color="#f4a261", alpha=0.35, label="before (polygonized)")
        draw(ax, before, color="#e76f51", lw=1.2)
        draw(ax, after, color="#1d3557", lw=2.2, label="after (regularized)" if changed else "after (unchanged)")
        ax.set_title(
            f"{name}\n{'regularized' if changed else 'left as is'}: "
            f"{len(before.exterior.coords) - 1} -> {len(after.exterior.coords) - 1} vertices",
            fontsize=9,
        )
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color="#e76f51", lw=1.2), plt.Line2D([], [], color="#1d3557", lw=2.2)]
    fig.legend(handles, ["before: polygonized noisy mask", "after: regularize_polygon()"], loc="lower center", ncol=2)
    fig.suptitle(
        "Building regularization: squared to the dominant orientation; round/irregular shapes kept", fontsize=11
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stand_in_probabilities(labels, shape, transform, seed: int = 0) -> np.ndarray:
    """footprint/boundary/contact stand-in from label polygons: blurred, with smooth noise."""
    from rasterio.features import rasterize
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    ids = rasterize([(g, i + 1) for i, g in enumerate(labels)], out_shape=shape, transform=transform, dtype="int32")
    footprint = (ids > 0).astype(np.float32)
    big = np.int32(1 << 30)
    ids_or_big = np.where(ids > 0, ids, big)
    # Boundary: building pixels next to anything else; contact: pixels within 3 px of two buildings.
    boundary = (ids > 0) & (
        (ndimage.grey_dilation(ids, size=3) != ids) | (ndimage.grey_erosion(ids_or_big, size=3) != ids)
    )
    nearest_max = ndimage.grey_dilation(ids, size=7)
    nearest_min = ndimage.grey_erosion(ids_or_big, size=7)
    contact = (nearest_max > 0) & (nearest_min < big) & (nearest_max != nearest_min)
    boundary, contact = boundary.astype(np.float32), contact.astype(np.float32)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, shape), 4) * 4.0
    footprint = np.clip(ndimage.gaussian_filter(footprint, 2.0) + 0.25 * noise, 0, 1)
    boundary = np.clip(ndimage.gaussian_filter(boundary, 1.5) * 1.6, 0, 1)
    contact = np.clip(ndimage.gaussian_filter(contact, 1.5) * 2.0, 0, 1)
    return np.stack([footprint, boundary, contact]).astype(np.float32)


def real_raster_picture(data: Path, path: Path) -> str:
    import rasterio
    from rasterio.windows import Window

    vrt = data / "eo" / "hotosm_banepa" / "mosaic.vrt"
    with rasterio.open(vrt) as dataset:
        window = Window(1024, 1024, 1024, 1024)  # 2 x 2 z19 tiles, about 135 m across
        rgb = dataset.read((1, 2, 3), window=window)
        transform = dataset.window_transform(window)
        crs_wkt = dataset.crs.to_wkt()
    extent = shapely.box(transform.c, transform.f + 1024 * transform.e, transform.c + 1024 * transform.a, transform.f)
    labels = [
        g
        for g in read_polygons(data / "eo" / "hotosm_banepa" / "labels.geojson", target_crs_wkt=crs_wkt).geometries
        if g.intersects(extent)
    ]
    prob = stand_in_probabilities(labels, (1024, 1024), transform)
    options = PolygonOptions(regularize=True, block_size=512)  # 2 x 2 blocks: seams are exercised too
    result = polygonize_array(prob, transform, crs_wkt, options, source=vrt.name, model="label stand-in")
    fig, axes = plt.subplots(1, 2, figsize=(15, 7.8))
    left, bottom, right, top = extent.bounds
    for ax in axes:
        ax.imshow(np.moveaxis(rgb, 0, -1), extent=(left, right, bottom, top))
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].imshow(prob[0], extent=(left, right, bottom, top), cmap="magma", alpha=0.55, vmin=0, vmax=1)
    axes[0].set_title(
        "Stand-in footprint probability (OSM labels burned, blurred, noised)\n" "over the Banepa OAM image (0.13 m)",
        fontsize=10,
    )
    for geom in labels:
        draw(axes[1], geom.intersection(extent) if not geom.within(extent) else geom, color="yellow", lw=1.0, ls="--")
    for geom, attrs in zip(result.geometries, result.attributes):
        draw(axes[1], geom, color="cyan" if attrs["regularized"] else "magenta", lw=1.6)
    n_reg = sum(a["regularized"] for a in result.attributes)
    from footprint_plugin.core.vectors.evaluate import score_polygons

    truth = [g.intersection(extent) for g in labels if g.intersection(extent).area > 0]
    scores, _ = score_polygons(result.geometries, truth)
    axes[1].set_title(
        f"{len(result.geometries)} polygons (watershed split, regularized; cyan: squared {n_reg}, magenta: kept)\n"
        f"yellow dashed: OSM labels (SpaceNet F1 vs labels {scores.f1:.2f})",
        fontsize=10,
    )
    fig.suptitle(
        "Polygons over real imagery: hotosm_banepa mosaic. Probabilities are a label-derived stand-in, "
        "NOT a trained model",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"{len(result.geometries)} polygons, {n_reg} regularized, {len(labels)} labels in view, F1 {scores.f1:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    regularization_picture(OUT / "regularize_before_after.png")
    print(OUT / "regularize_before_after.png")
    if (args.data / "eo" / "hotosm_banepa").is_dir():
        summary = real_raster_picture(args.data, OUT / "polygons_banepa.png")
        print(OUT / "polygons_banepa.png", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
