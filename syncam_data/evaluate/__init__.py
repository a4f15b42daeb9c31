"""`syncam-data eval`: cross-view matching, camera accuracy and optional model-based scores.

Modules: ``inputs`` (groups of synchronized views from each INPUT layout),
``matching`` (SIFT + ratio test + RANSAC), ``epipolar`` (F from stated
cameras, Sampson / symmetric distances), ``clip_scores`` and ``fvd`` (only
with local weights), ``run`` (per-group tasks and the whole run), ``report``
(eval.parquet, summary.json, report.html) and ``synthetic`` (a textured scene
with known cameras for tests and benchmarks).
"""
