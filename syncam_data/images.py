"""Still images as the cameras describe them: the stored pixels, never turned by an EXIF tag.

A JPEG from a phone stores landscape pixels plus an EXIF ``Orientation`` tag
saying "rotate to display". COLMAP and nerfstudio solve poses on the stored
pixels and ignore the tag, and so do ``cameras.json``, the shard index
(``width``/``height`` from the image header, ``shards/adapters/base.py``) and
K. OpenCV's ``imdecode`` applies the tag by default, which would hand
``validate``, the loader and the reports a transposed image whose size no
longer matches its camera. Every reader of image bytes goes through here.
"""

from __future__ import annotations

import numpy as np


def decode_rgb(data: bytes | np.ndarray) -> np.ndarray | None:
    """JPEG/PNG bytes -> RGB uint8 (H, W, 3) of the stored pixels; None when they do not decode."""
    import cv2  # on first use: syncam-data's start-up does not load OpenCV

    buf = np.frombuffer(data, np.uint8)  # bytes, or the uint8 array np.fromfile gives: no copy
    if buf.size == 0:
        return None
    # IMREAD_IGNORE_ORIENTATION (OpenCV imgcodecs): "do not rotate the image according to EXIF's orientation flag"
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
