"""A view rendered without blocking QGIS: the dock's counterpart of `plugin.ask_map.render`.

`QgsMapRendererSequentialJob` is started on the main thread (its layer renderers are made there, from the
layers), draws in a worker thread (QtConcurrent) and says `finished` on the main thread, as QGIS's own
canvas and map exports do (qgsmaprenderersequentialjob.cpp). Its image is painted exactly as
`ask_map.render` paints: one `QgsMapRendererCustomPainterJob` on a `deviceOutputSize()` image that the job
fills with the settings' background colour first (qgsmaprenderercustompainterjob.cpp, preparePainter), so
the pixels and the frame of the view do not change.
"""
from __future__ import annotations

from typing import Optional

from qgis.core import Qgis, QgsMapRendererSequentialJob, QgsMapSettings, QgsMessageLog
from qgis.PyQt.QtCore import QObject, pyqtSignal
from qgis.PyQt.QtGui import QImage

from .ask_map import layer_errors

LOG_TAG = "GeoVLM"


class ViewRender(QObject):
    """Renders one view at a time, main thread only. `start(settings)` returns at once; `rendered(settings,
    image, errors)` follows on the main thread with a copy of the map settings, the image (`deviceOutputSize()`
    device pixels, device pixel ratio 1, as `ask_map.render` returns it) and the render's layer errors
    ((layer name, message) pairs, as `ask_map.render` collects them; also logged, tag "GeoVLM"), unless
    `cancel()` came first: a cancelled render says nothing, ever."""

    rendered = pyqtSignal(object, object, object)

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self._job: Optional[QgsMapRendererSequentialJob] = None
        self._settings: Optional[QgsMapSettings] = None

    def active(self) -> bool:
        """True from `start()` until `rendered` or `cancel()`."""
        return self._job is not None

    def start(self, settings: QgsMapSettings) -> None:
        """Start rendering `settings` (copied). Raises RuntimeError while another render is active."""
        if self._job is not None:
            raise RuntimeError("a view is already being rendered")
        self._settings = QgsMapSettings(settings)
        job = QgsMapRendererSequentialJob(self._settings)
        job.setParent(self)  # Qt owns it from here: deleted after its finished(), or with this object
        job.finished.connect(lambda job=job: self._finished(job))
        self._job = job
        job.start()

    def cancel(self, wait: bool = False) -> None:
        """Stop the render in progress, if any; `rendered` is not emitted for it. `wait=False` returns at once
        (the worker stops at its next check: a raster block, a network reply); `wait=True` blocks until it
        has stopped (unload: nothing may keep drawing)."""
        job, self._job = self._job, None
        if job is None:
            return
        if wait:
            job.cancel()  # blocks; its finished() comes inside this call and is ignored
        else:
            job.cancelWithoutBlocking()  # Qt keeps it until its worker ends and finished() comes

    def _finished(self, job: QgsMapRendererSequentialJob) -> None:
        job.deleteLater()
        if job is not self._job:  # cancelled
            return
        self._job = None
        settings, self._settings = self._settings, None
        errors = layer_errors(job, settings)
        for name, message in errors:
            QgsMessageLog.logMessage(f"rendering the view: {name}: {message}", LOG_TAG, Qgis.MessageLevel.Warning)
        image = QImage(job.renderedImage())
        image.setDevicePixelRatio(1.0)
        self.rendered.emit(settings, image, errors)
