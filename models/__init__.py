"""The engine's model side (torch, transformers, onnxruntime, numba; never imported by QGIS): checkpoint folders,
their conversion to llava-hf/MiniGPT-v2 layouts, the vision encoder's ONNX export, int8 quantisation and runtime,
the language model's batched decoding, and the pipeline that joins them (`pipeline.VlmPipeline`)."""
