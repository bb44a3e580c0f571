"""What happens to our outputs after an algorithm ran, the same on every path.

QGIS loads Processing outputs itself (toolbox, batch mode, Model Designer) and calls the layer
post-processor set on each output's `QgsProcessingContext.LayerDetails`. We set one there, so every
path gets the same result: a layer group named after the input, building outlines styled with
resources/buildings.qml on top of the probability raster styled with resources/probability.qml (one
band, the footprint head, transparent where buildings are unlikely). The toolbar button loads its
outputs with `load_outputs`, the same steps the toolbox runs. `qgis_process` loads nothing, so the
styles also go into the output files where the format holds one: the GeoPackage's layer_styles table
(default style) and a .qml beside the probability GeoTIFF, which QGIS reads when the file is opened.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Optional, Union

from qgis.core import (
    QgsFillSymbol,
    QgsLayerTreeGroup,
    QgsMapLayer,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingUtils,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
)

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
BUILDINGS_STYLE = RESOURCES / "buildings.qml"
PROBABILITY_STYLE = RESOURCES / "probability.qml"
CELLS_STYLE = RESOURCES / "cells.qml"
BUILDINGS_NAME = "Buildings"
PROBABILITY_NAME = "Building probability"
STYLE_DESCRIPTION = "Building Footprints plugin style"
# Evaluate's outputs: fixed colours a user learns once (matched, wrong, missed).
TP_COLOUR, FP_COLOUR, FN_COLOUR = "#2ca02c", "#d62728", "#ff7f0e"

# A style is one of our .qml files or an outline colour.
Style = Union[Path, str]
# Algorithm name -> output name -> (style, layer name template, position in the group: 0 top, -1 bottom).
# Templates name the input and the model, so two runs' layers can be told apart in every layer picker.
STYLED_OUTPUTS: dict[str, dict[str, tuple[Style, str, int]]] = {
    "detectbuildings": {
        "OUTPUT": (BUILDINGS_STYLE, BUILDINGS_NAME + " — {input} ({model})", 0),
        "PROBABILITY": (PROBABILITY_STYLE, PROBABILITY_NAME + " — {input}", -1),
    },
    "batchdetect": {"OUTPUT": (BUILDINGS_STYLE, BUILDINGS_NAME + " — {input} ({model})", 0)},
    "suggestcells": {"OUTPUT": (CELLS_STYLE, "Where to digitize next — {input}", 0)},
    "evaluatefootprints": {
        "TRUE_POSITIVES": (TP_COLOUR, "True positives — {input}", 0),
        "FALSE_POSITIVES": (FP_COLOUR, "False positives — {input}", 1),
        "FALSE_NEGATIVES": (FN_COLOUR, "False negatives (missed) — {input}", 2),
    },
}

# QGIS keeps only a raw pointer to a post-processor: Python must hold it until the layers are loaded.
_ALIVE: deque = deque(maxlen=256)


def unique_group_name(root: QgsLayerTreeGroup, base: str) -> str:
    """`base`, or `base (2)`, `base (3)`… when a group of that name is in the tree already."""
    name, number = base, 1
    while root.findGroup(name) is not None:
        number += 1
        name = f"{base} ({number})"
    return name


class ResultGroup:
    """The layer group one run's outputs go into, created when its first layer arrives."""

    def __init__(self, base_name: str) -> None:
        self.base_name = base_name or "Building footprints"
        self.group: Optional[QgsLayerTreeGroup] = None
        self.name = ""

    def node(self, project: QgsProject) -> QgsLayerTreeGroup:
        if self.group is None:
            root = project.layerTreeRoot()
            self.name = unique_group_name(root, self.base_name)
            self.group = root.insertGroup(0, self.name)
            self.group.setExpanded(True)
        return self.group


def unique_layer_name(project: QgsProject, base: str, layer: Optional[QgsMapLayer] = None) -> str:
    """`base`, or `base (2)`, `base (3)`… when the project has another layer of that name already."""
    own = layer.id() if layer is not None else None
    taken = {other.name() for other in project.mapLayers().values() if other.id() != own}
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base} ({number})"
    return name


def apply_style(layer: QgsMapLayer, style: Style) -> bool:
    """Load one of our .qml styles (a raster shows only band 1, the footprint head, as the qml says),
    or draw polygons as outlines of one colour over a light fill of it."""
    if isinstance(style, Path):
        _message, ok = layer.loadNamedStyle(str(style))
    elif isinstance(layer, QgsVectorLayer):
        symbol = QgsFillSymbol.createSimple(
            {"color": style, "outline_color": style, "outline_width": "0.6", "style": "solid"}
        )
        symbol.setOpacity(1.0)
        fill = symbol.symbolLayer(0)
        colour = fill.color()
        colour.setAlpha(60)  # the imagery stays visible through the fill
        fill.setColor(colour)
        layer.setRenderer(QgsSingleSymbolRenderer(symbol))
        ok = True
    else:
        ok = False
    layer.triggerRepaint()
    return bool(ok)


POSITION_PROPERTY = "building_footprints/position"


def _move_into_group(layer: QgsMapLayer, project: QgsProject, group: QgsLayerTreeGroup, position: int) -> None:
    """Put the layer into the run's group at its place (-1: the bottom), whatever order the layers arrive in."""
    order = position if position >= 0 else 1_000_000
    layer.setCustomProperty(POSITION_PROPERTY, order)
    root = project.layerTreeRoot()
    node = root.findLayer(layer.id())
    siblings = [child for child in group.children() if child is not node]
    index = sum(
        1
        for child in siblings
        if getattr(child, "layer", None) is not None
        and child.layer() is not None
        and int(child.layer().customProperty(POSITION_PROPERTY, 0)) <= order
    )
    if node is None:
        group.insertLayer(index, layer)
        return
    # Also when QGIS put it into our group already (the desktop inserts new layers at the current
    # insertion point, which may be this group): outlines on top, the raster at the bottom.
    clone = node.clone()
    group.insertChildNode(index + (1 if node.parent() is group and group.children().index(node) < index else 0), clone)
    node.parent().removeChildNode(node)


class StyledResult(QgsProcessingLayerPostProcessorInterface):
    """Post-processor of one output: name, style and place in the run's group."""

    def __init__(self, style: Style, layer_name: str, group: ResultGroup, position: int) -> None:
        super().__init__()
        self.style = style
        self.layer_name = layer_name
        self.group = group
        self.position = position

    def postProcessLayer(  # noqa: N802 - QGIS override
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        project = context.project() or QgsProject.instance()
        if layer is None or not layer.isValid():
            return
        layer.setName(unique_layer_name(project, self.layer_name, layer))
        apply_style(layer, self.style)
        if project.mapLayer(layer.id()) is None:
            project.addMapLayer(layer, False)
        _move_into_group(layer, project, self.group.node(project), self.position)


def input_name(algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
    """What the outputs are named after: the input raster (detect), the tiles' folder (batch) or the
    predicted layer (evaluate)."""
    if algorithm.name() == "detectbuildings":
        layer = algorithm.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is not None:
            return layer.name()
    if algorithm.name() == "suggestcells":
        layer = algorithm.parameterAsRasterLayer(parameters, "PROBABILITY", context)
        if layer is not None:
            return layer.name()
    if algorithm.name() == "batchdetect":
        folder = algorithm.parameterAsFile(parameters, "FOLDER", context)
        return Path(folder).name if folder else "tiles"
    if algorithm.name() == "evaluatefootprints":
        layer = algorithm.parameterAsVectorLayer(parameters, "PREDICTED", context)
        if layer is not None:
            return layer.name()
    return ""


def group_base_name(algorithm: QgsProcessingAlgorithm, name: str) -> str:
    """The group is named after the input raster (detect), the tiles' folder (batch) or the scored layer."""
    if algorithm.name() == "batchdetect":
        return f"Buildings in {name}"
    if algorithm.name() == "evaluatefootprints":
        return f"Evaluation — {name}" if name else "Evaluation"
    return name or "Building footprints"


def remember_inputs(
    algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], context: QgsProcessingContext
) -> None:
    """Called before the run (any thread): what post_process needs later on the main thread."""
    if algorithm.name() not in STYLED_OUTPUTS:
        return
    try:
        algorithm._footprint_input_name = input_name(algorithm, parameters, context)  # noqa: SLF001
    except Exception:  # noqa: BLE001 - naming the outputs must never fail a run
        algorithm._footprint_input_name = ""  # noqa: SLF001


def post_process(algorithm: QgsProcessingAlgorithm, context: QgsProcessingContext, results: dict[str, Any]) -> None:
    """After a successful run (main thread, every path): set the post-processors, embed the styles."""
    outputs = STYLED_OUTPUTS.get(algorithm.name())
    if not outputs or not results:
        return
    _drop_unresolved_memory_entries(context)
    name = getattr(algorithm, "_footprint_input_name", "")
    group = ResultGroup(group_base_name(algorithm, name))
    for output_name, (style, template, position) in outputs.items():
        value = results.get(output_name)
        if not value:
            continue
        value = str(value)
        layer_name = template.format(input=name or "input", model=_model_label(results.get("MODEL_USED")))
        embed_style(value, style)
        if context.willLoadLayerOnCompletion(value):
            processor = StyledResult(style, layer_name, group, position)
            _ALIVE.append(processor)
            details = context.layerToLoadOnCompletionDetails(value)
            details.setPostProcessor(processor)
            details.name = layer_name


def _model_label(display_name: Any) -> str:
    """'footprint_eo_lite0 (v2.0)' -> 'footprint_eo_lite0 v2.0': no brackets inside the layer name's brackets."""
    text = str(display_name or "model")
    return text[:-1].replace(" (v", " v") if text.endswith(")") and " (v" in text else text


def _drop_unresolved_memory_entries(context: QgsProcessingContext) -> None:
    """parameterAsOutputLayer() on a temporary sink (an output check does that before the sink exists)
    registers 'memory:<name>' to load; only the sink's layer id is real. Left in, the toolbox reports
    "The following layers were not correctly generated: memory:Buildings"."""
    layers = context.layersToLoadOnCompletion()
    bogus = [key for key in layers if key.startswith("memory:") and context.getMapLayer(key) is None]
    if bogus:
        context.setLayersToLoadOnCompletion({key: value for key, value in layers.items() if key not in bogus})


def embed_style(destination: str, style: Style) -> None:
    """Store the style in the output itself, so it opens styled anywhere (qgis_process included).

    GeoPackage: the default style in its layer_styles table. GeoTIFF and Shapefile: a .qml of the same
    name beside it, which QGIS reads on opening, written only when none is there (never over a user's own).
    """
    path = Path(destination.split("|")[0])
    suffix = path.suffix.lower()
    if not path.is_file():
        return
    if suffix == ".gpkg":
        layer = QgsVectorLayer(destination, BUILDINGS_NAME, "ogr")
        if layer.isValid() and apply_style(layer, style):
            layer.saveStyleToDatabase(BUILDINGS_NAME, STYLE_DESCRIPTION, True, "")
        return
    sidecar = path.with_suffix(".qml")
    if sidecar.exists():
        return
    if suffix in (".tif", ".tiff") and isinstance(style, Path):
        sidecar.write_bytes(style.read_bytes())
    elif suffix == ".shp":
        layer = QgsVectorLayer(str(path), BUILDINGS_NAME, "ogr")
        if layer.isValid() and apply_style(layer, style):
            _add_field_aliases(layer)
            layer.saveNamedStyle(str(sidecar))


def _add_field_aliases(layer: QgsVectorLayer) -> None:
    """Shapefile field names stop at 10 characters: show the full names as aliases."""
    for short, full in SHAPEFILE_FIELDS.items():
        index = layer.fields().indexOf(short)
        if index >= 0:
            layer.setFieldAlias(index, full)


# Our field names longer than a Shapefile allows -> the 10-character names the Shapefile gets.
SHAPEFILE_FIELDS = {"perimeter_": "perimeter_m", "compactnes": "compactness", "regularize": "regularized"}


def load_outputs(context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> list[QgsMapLayer]:
    """Load the outputs a run marked for loading, as the toolbox does, and run their post-processors.

    The toolbar button uses this after its task, so it gives the same layers as the toolbox.
    """
    loaded = []
    for layer_id, details in context.layersToLoadOnCompletion().items():
        layer = QgsProcessingUtils.mapLayerFromString(layer_id, context, typeHint=details.layerTypeHint)
        if layer is None:
            layer = _layer_from_provider_uri(layer_id, details.name or BUILDINGS_NAME)
        if layer is None:
            feedback.reportError(f"The output {layer_id} could not be loaded.", fatalError=False)
            continue
        details.setOutputLayerName(layer)
        project = details.project or context.project() or QgsProject.instance()
        taken = context.temporaryLayerStore().takeMapLayer(layer)
        project.addMapLayer(taken or layer)
        processor = details.postProcessor()
        if processor is not None:
            processor.postProcessLayer(layer, context, feedback)
        loaded.append(layer)
    context.setLayersToLoadOnCompletion({})
    return loaded


def _layer_from_provider_uri(value: str, name: str) -> Optional[QgsMapLayer]:
    """`postgres:dbname=… table=…` (a database-table destination): QGIS 3.22's mapLayerFromString does not
    read the provider prefix, so open the layer with that provider ourselves."""
    key, _, uri = value.partition(":")
    if not uri or key not in QgsProviderRegistry.instance().providerList() or key in ("gdal", "ogr"):
        return None
    layer = QgsVectorLayer(uri, name, key)
    return layer if layer.isValid() else None


def is_result_layer(layer: QgsMapLayer) -> bool:
    """True for a layer one of our runs produced (a probability raster, a building layer), e.g. to keep
    it out of the training inputs. Read from the data (raster tag, vector fields), not from layer names."""
    if isinstance(layer, QgsRasterLayer):
        if layer.providerType() != "gdal":
            return False
        from osgeo import gdal

        dataset = gdal.OpenEx(layer.source().split("|")[0], gdal.OF_RASTER)
        return dataset is not None and bool(dataset.GetMetadataItem("FOOTPRINT_HEADS"))
    if isinstance(layer, QgsVectorLayer):
        return {"score", "compactness", "regularized", "model"} <= set(layer.fields().names())
    return False
