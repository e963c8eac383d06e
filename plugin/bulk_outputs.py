"""The layers of a bulk run's GeoPackage (tiles, objects, relations, features) loaded into the project with their
QML style from styles/: by QGIS when the run succeeds, and, when the run fails with answers committed (tiles or
features left undone), by the Processing dialog all the same, so that what was done can be seen while Run
resumes the rest."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, Sequence, Tuple

from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProcessingLayerPostProcessorInterface
from qgis.PyQt.QtCore import QObject, pyqtSignal, pyqtSlot

STYLES = Path(__file__).resolve().parents[1] / "styles"

# (output name, layer of the GeoPackage, style: styles/<style>.qml when it exists)
OutputLayers = Sequence[Tuple[str, str, str]]


def load_on_completion(out: str, layer: str, style: str, context) -> str:
    """The URI of `layer` of the GeoPackage `out`, added to `context`'s layers to load on completion (named
    "<file stem> <layer>", into the context's project) with its QML style from styles/ (when styles/`style`.qml
    exists). A layer of that URI already in the project is the one QGIS restyles and reloads, not a second copy
    (processing's `handleAlgorithmResults` finds it by its source)."""
    uri = f"{out}|layername={layer}"
    details = QgsProcessingContext.LayerDetails(f"{Path(out).stem} {layer}", context.project(), layer)
    details.setPostProcessor(_StylePostProcessor.create(STYLES / f"{style}.qml"))
    context.addLayerToLoadOnCompletion(uri, details)
    return uri


def style_on_completion(context, dest_id, style: str) -> None:
    """Give the layer `dest_id` that `context` loads on completion (a Processing dialog's output left to load,
    `processing.runAndLoadResults`) the QML style styles/`style`.qml, as the bulk runs' layers get: objects
    labelled, relations as arrows labelled with the predicate. Nothing for an output not loaded (None, or
    not asked to load)."""
    if dest_id and context.willLoadLayerOnCompletion(dest_id):
        details = context.layerToLoadOnCompletionDetails(dest_id)
        details.setPostProcessor(_StylePostProcessor.create(STYLES / f"{style}.qml"))


class FailedRunLayers(QObject):
    """Hands the layers of a run that is about to fail to the context the run was prepared with, in that
    context's own thread.

    QGIS loads the layers of a Processing context once its algorithm has ended: the dialog (processing's
    `AlgorithmDialog.finish` → `handleAlgorithmResults`) does so for a failed run too, but a run in the
    background (`QgsProcessingAlgRunnerTask`) works in a thread-local copy of the context that QGIS merges back
    only when the run succeeds (`QgsProcessingAlgorithm::postProcess`). So a run that fails with answers
    committed names its layers here before it raises: created by `prepareAlgorithm` in the caller's thread with
    the caller's context, this object registers them on that context through a queued signal, which the
    caller's thread delivers before the task's end (posted earlier), so the dialog loads them, styled as on
    success; a run in the caller's thread (`processing.run`, `qgis_process`, a graphical model's step)
    registers them at once on the context that its caller then discards, as for any failed run, and those
    still end failed, loading nothing. After Cancel the dialog loads no layer at all (`handleAlgorithmResults`
    stops for a cancelled feedback), as for any algorithm."""

    requested = pyqtSignal(str, str, str)

    def __init__(self, context):
        super().__init__()
        self.context = context
        self.requested.connect(self._register)

    def load(self, out: str, layers: OutputLayers) -> None:
        """Ask for `layers` of the GeoPackage `out` to be loaded with the caller's context. Any thread."""
        for _, layer, style in layers:
            self.requested.emit(out, layer, style)

    @pyqtSlot(str, str, str)
    def _register(self, out: str, layer: str, style: str) -> None:
        load_on_completion(out, layer, style, self.context)


def finish_run(report, out: str, layers: OutputLayers, context, failed_layers) -> Dict[str, str]:
    """The outputs of a bulk run whose answers are all committed to `out`: {output name: layer URI}, each
    layer loaded on completion with `context` (the run's). `report()` (`alg_bulk_tiles.report_outcome`) raises
    QgsProcessingException when tiles or features were left undone; the layers are then handed to
    `failed_layers` (the `FailedRunLayers` of the run's `prepareAlgorithm`) before the exception goes on."""
    outputs = {name: load_on_completion(out, layer, style, context) for name, layer, style in layers}
    try:
        report()
    except QgsProcessingException:
        failed_layers.load(out, layers)
        raise
    return outputs


class _StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Applies a QML style to a layer loaded on completion and rereads its data (a layer loaded by an earlier,
    failed run of the same output is the one QGIS hands back: its features have changed since); the instances
    are kept alive here (the last 32: made by the runs' threads and the caller's, hence the lock), since
    Processing holds only a plain pointer to them."""

    _alive = []
    _lock = threading.Lock()

    def __init__(self, qml: Path):
        super().__init__()
        self.qml = qml

    @classmethod
    def create(cls, qml: Path):
        instance = cls(qml)
        with cls._lock:
            cls._alive[:] = cls._alive[-31:] + [instance]
        return instance

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        layer.reload()
        if self.qml.is_file():
            layer.loadNamedStyle(str(self.qml))
        layer.triggerRepaint()
