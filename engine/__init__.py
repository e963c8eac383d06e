"""The engine process and what starts it: the OpenAI-compatible HTTP server (`geovlm serve`: `server`, its request
body `protocol`, `connections`, request `batching`, `memory` budgets, `cpu_threads`), and `launcher` and `lifeline`
(standard library only, imported by the QGIS plugin too), which start and watch a local engine process."""
