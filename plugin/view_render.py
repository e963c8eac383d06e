"""A view rendered without blocking QGIS: the dock's counterpart of `plugin.ask_map.render`.

`QgsMapRendererSequentialJob` is started on the main thread (its layer renderers are made there, from the
layers), draws in a worker thread (QtConcurrent) and says `finished` on the main thread, as QGIS's own
canvas and map exports do (qgsmaprenderersequentialjob.cpp). Its image is painted exactly as
`ask_map.render` paints: one `QgsMapRendererCustomPainterJob` on a `deviceOutputSize()` image that the job
fills with the settings' background colour first (qgsmaprenderercustompainterjob.cpp, preparePainter), so
the pixels and the frame of the view do not change.

A view whose image is only the background colour is rendered a second time on a transparent background, as
`geovlm:askmap` does, to tell a view in which no layer drew (all nodata) from one drawn in that colour
(`plugin.view_checks.blank_problem` says why).
"""
from __future__ import annotations

from typing import Optional

from qgis.core import Qgis, QgsMapRendererSequentialJob, QgsMapSettings, QgsMessageLog
from qgis.PyQt.QtCore import QObject, pyqtSignal
from qgis.PyQt.QtGui import QImage

from .ask_map import layer_errors
from .view_checks import drawn_nothing, only_background, transparent_settings

LOG_TAG = "GeoVLM"


class ViewRender(QObject):
    """Renders one view at a time, main thread only. `start(settings)` returns at once; `rendered(settings,
    image, errors, drawn)` follows on the main thread with a copy of the map settings, the image
    (`deviceOutputSize()` device pixels, device pixel ratio 1, as `ask_map.render` returns it), the render's
    layer errors ((layer name, message) pairs, as `ask_map.render` collects them; also logged, tag "GeoVLM")
    and `drawn`: False when none of the layers drew a pixel (the image is only the background colour, and a
    render on a transparent background is transparent everywhere), unless `cancel()` came first: a cancelled
    render says nothing, ever."""

    rendered = pyqtSignal(object, object, object, bool)

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self._job: Optional[QgsMapRendererSequentialJob] = None
        self._settings: Optional[QgsMapSettings] = None
        self._done: Optional[tuple] = None  # (image, errors) of the view, while its transparent render runs

    def active(self) -> bool:
        """True from `start()` until `rendered` or `cancel()`."""
        return self._job is not None

    def start(self, settings: QgsMapSettings) -> None:
        """Start rendering `settings` (copied). Raises RuntimeError while another render is active."""
        if self._job is not None:
            raise RuntimeError("a view is already being rendered")
        self._settings, self._done = QgsMapSettings(settings), None
        self._run(self._settings)

    def _run(self, settings: QgsMapSettings) -> None:
        job = QgsMapRendererSequentialJob(settings)
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
        if self._done is not None:  # the transparent render of a view that is only background
            (image, errors), self._done = self._done, None
            settings, self._settings = self._settings, None
            self.rendered.emit(settings, image, errors, not drawn_nothing(job.renderedImage()))
            return
        errors = layer_errors(job, self._settings)
        for name, message in errors:
            QgsMessageLog.logMessage(f"rendering the view: {name}: {message}", LOG_TAG, Qgis.MessageLevel.Warning)
        image = QImage(job.renderedImage())
        image.setDevicePixelRatio(1.0)
        if not errors and only_background(self._settings, image):
            self._done = (image, errors)
            self._run(transparent_settings(self._settings))
            return
        settings, self._settings = self._settings, None
        self.rendered.emit(settings, image, errors, True)
