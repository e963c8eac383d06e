"""The GeoVLM Processing provider: its algorithms run from the toolbox, models and qgis_process."""
from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .alg_ask_map import AskMapAlgorithm
from .alg_bulk_tiles import CaptionTilesAlgorithm, DetectTilesAlgorithm
from .alg_caption_features import CaptionFeaturesAlgorithm
from .alg_parse_answers import ParseAnswersAlgorithm

ICON = Path(__file__).resolve().parents[1] / "icons" / "geovlm.svg"


class GeoVlmProvider(QgsProcessingProvider):
    def id(self):
        return "geovlm"

    def name(self):
        return "GeoVLM"

    def icon(self):
        return QIcon(str(ICON))

    def loadAlgorithms(self):  # noqa: N802
        self.addAlgorithm(ParseAnswersAlgorithm())
        self.addAlgorithm(AskMapAlgorithm())
        self.addAlgorithm(CaptionTilesAlgorithm())
        self.addAlgorithm(DetectTilesAlgorithm())
        self.addAlgorithm(CaptionFeaturesAlgorithm())
