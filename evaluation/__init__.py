"""`geovlm eval`: benchmark metrics for saved answers, computed as the models' own papers and evaluation scripts
compute them, so the numbers are comparable with the published ones.

Engine side (shapely, rouge-score, NLTK, pycocoevalcap, geopandas): never imported inside QGIS. One module per
kind of metric: `detection` (precision@0.5 of boxes), `text_metrics` (ROUGE, METEOR, BLEU, CIDEr), `accuracy`
(VQA and scene classification), `scene_graph` (subject-predicate-object triplet recall), `layers` (the same
metrics for GeoPackage layers matched by location); `vqa_normalisation` rewrites answers as the official VQA
evaluation does, `records` reads the JSON-lines files and `wordnet` loads WordNet 3.0 from the system for METEOR.
"""
