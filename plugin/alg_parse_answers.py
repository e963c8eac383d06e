"""Processing algorithm: saved model answers -> georeferenced objects and relations layers."""
from __future__ import annotations

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeatureSink,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsWkbTypes,
)

from ..core.answer_files import read_answers
from ..core.georef import ImageFrame, parse_image_size
from ..core.parsing import parse_answer, referred_phrase
from ..core.profiles import family_names, get_profile
from .qgis_geometry import answer_features, object_fields, raster_frame, relation_fields


class ParseAnswersAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    FAMILY = "FAMILY"
    FIELD = "FIELD"
    RASTER = "RASTER"
    IMAGE_SIZE = "IMAGE_SIZE"
    OBJECTS = "OBJECTS"
    RELATIONS = "RELATIONS"

    def name(self):
        return "parseanswers"

    def displayName(self):  # noqa: N802
        return "Parse saved answers into layers"

    def group(self):
        return "Answers"

    def groupId(self):  # noqa: N802
        return "answers"

    def shortHelpString(self):  # noqa: N802
        return (
            "Reads saved answers of a vision-language model (JSON lines with the answer in a field, or one "
            "answer a line) and writes every box as a polygon and every relation as a line. With a raster "
            "layer the boxes are placed on it; without one they stay in the pixel space of the image size."
        )

    def createInstance(self):  # noqa: N802
        return ParseAnswersAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            self.INPUT, "Answers file", QgsProcessingParameterFile.Behavior.File,
            fileFilter="JSON lines (*.jsonl *.json);;Text, one answer a line (*.txt);;All files (*)"))
        titles = [get_profile(name).title for name in family_names()]
        self.addParameter(QgsProcessingParameterEnum(self.FAMILY, "Model family", options=titles,
                                                     defaultValue=family_names().index("geochat")))
        self.addParameter(QgsProcessingParameterString(self.FIELD, "JSON field holding the answer",
                                                       defaultValue="answer"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.RASTER, "Raster the answers are about",
                                                            optional=True))
        self.addParameter(QgsProcessingParameterString(self.IMAGE_SIZE, "Image size WxH (without a raster)",
                                                       defaultValue="100x100"))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OBJECTS, "Objects",
                                                            QgsProcessing.SourceType.TypeVectorPolygon))
        self.addParameter(QgsProcessingParameterFeatureSink(self.RELATIONS, "Relations",
                                                            QgsProcessing.SourceType.TypeVectorLine))

    def _frame(self, parameters, context) -> ImageFrame:
        layer = self.parameterAsRasterLayer(parameters, self.RASTER, context)
        if layer is not None:
            return raster_frame(layer)
        return ImageFrame(*parse_image_size(self.parameterAsString(parameters, self.IMAGE_SIZE, context)))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        path = self.parameterAsFile(parameters, self.INPUT, context)
        family = family_names()[self.parameterAsEnum(parameters, self.FAMILY, context)]
        field = self.parameterAsString(parameters, self.FIELD, context)
        profile = get_profile(family)
        try:
            frame = self._frame(parameters, context)
            answers = list(read_answers(path, field))
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        crs = QgsCoordinateReferenceSystem(frame.crs) if frame.crs else QgsCoordinateReferenceSystem()
        obj_fields, rel_fields = object_fields(), relation_fields()
        obj_sink, obj_id = self.parameterAsSink(parameters, self.OBJECTS, context, obj_fields,
                                                QgsWkbTypes.Type.Polygon, crs)
        rel_sink, rel_id = self.parameterAsSink(parameters, self.RELATIONS, context, rel_fields,
                                                QgsWkbTypes.Type.LineString, crs)
        skipped = 0
        for i, (line, text, question) in enumerate(answers):
            if feedback.isCanceled():
                break
            answer = parse_answer(text, profile, (frame.width, frame.height), default_label=referred_phrase(question))
            skipped += len(answer.skipped)
            objects, relations = answer_features(answer, frame, line, family, obj_fields, rel_fields)
            obj_sink.addFeatures(objects, QgsFeatureSink.Flag.FastInsert)
            rel_sink.addFeatures(relations, QgsFeatureSink.Flag.FastInsert)
            feedback.setProgress(100.0 * (i + 1) / max(1, len(answers)))
        feedback.pushInfo(f"{len(answers)} answers read, {skipped} unreadable fragments skipped")
        return {self.OBJECTS: obj_id, self.RELATIONS: rel_id}
