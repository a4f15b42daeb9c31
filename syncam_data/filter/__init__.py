"""Web-video motion filter (`syncam-data filter-videos`): static camera, moving subjects.

Modules: ``settings`` (validated options), ``decode`` (downsampled decode),
``isobmff`` (is an MP4/MOV complete?), ``cuts`` (scene cuts), ``segment`` (grid / SAM; the only importer of
``segment_anything``), ``track`` (Lucas-Kanade / CoTracker via torch.hub; the
only loader of CoTracker), ``score`` (camera vs subject motion, decisions),
``store`` (scores.parquet, resumable parts), ``stages`` (the work on one video:
decode, then analyze), ``run`` (the job: inputs, planning, local workers, rescoring), ``ray_engine``
(Ray Data), ``debug`` (images), ``synthetic`` (test videos with known motion).
See docs/filter-videos.md.
"""
