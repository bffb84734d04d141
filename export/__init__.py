"""Export a finished run to one image-only model file and a bundle a hospital's server can run
(docs/design.md §13).

``python -m export RUN_DIR --output DIR`` writes ``models/model.onnx`` and ``models/model.ts``
(:mod:`export.graph` → :mod:`export.formats`) with ``configs/metadata.json`` and a README
(:mod:`export.bundle`); ``python -m export.predict BUNDLE_DIR`` runs the ONNX file with onnxruntime
and no torch (:mod:`export.predict`, which imports only torch-free modules: :mod:`export.layout`).
"""
