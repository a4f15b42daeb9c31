"""How a stored frame relates to the camera that took it: its pixels, its aspect, ``--frame-resize``.

Camera files describe the full frame the poses were solved on: RealEstate10K's
normalized intrinsics a frame of aspect ``W/H = fy_n / fx_n`` (square pixels),
nerfstudio's ``transforms.json`` a ``w`` x ``h`` frame. Datasets are often
stored at another size; the intrinsics of the stored image follow from how it
was made:

- ``none`` (default): the stored frame is the whole source frame, resized with
  its aspect kept (within ``ASPECT_TOL``; each axis scales by its own factor, so
  a rounded ``images_8`` size stays exact). Another aspect is refused, naming
  what was found: intrinsics guessed for it would be wrong.
- ``squash``: the whole source frame resized to the stored size (each axis its
  own factor).
- ``center-crop``: resized uniformly to cover the stored size, then cropped at
  the centre (the usual "resize then centre-crop to 256x256"): the focal
  lengths scale by the one factor and the principal point moves by the crop
  offset. The offset is taken as exactly half the excess (a tool that rounded
  it to whole pixels is off by at most half a pixel).

EXIF orientation: pixels are always used as stored, never rotated by the
Orientation tag. That is what the tools that made the poses saw: COLMAP reads
images with ``oiio:reorient = 0`` (``Bitmap::Read`` in
colmap/colmap ``src/colmap/sensor/bitmap.cc``; automatic EXIF rotation was
removed again in colmap PR #1406, so that one camera model fits images taken
in any orientation), and nerfstudio's ``ns-process-data`` copies the images as
they are and makes ``images_N`` with ``ffmpeg -noautorotate``
(``nerfstudio/process_data/process_data_utils.py``), and its loader opens them
with PIL without ``exif_transpose``. An image whose tag is not 1 (upright) and
whose stored aspect disagrees with the camera has been re-saved rotated by some
other tool: it is refused with that reason, whatever ``--frame-resize`` says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from syncam_data.cameras import Camera
from syncam_data.images import decode_rgb
from syncam_data.sources.frameset import SourceError

FRAME_RESIZE = ("none", "squash", "center-crop")
ASPECT_TOL = 0.01  # relative: 1 %
EXIF_ORIENTATION = 0x0112


def read_image(path: Path) -> tuple[np.ndarray, int]:
    """(RGB uint8 of the pixels as stored, EXIF Orientation tag or 1); SourceError naming the file when unusable."""
    if not path.is_file():
        raise SourceError(f"{path}: image file is missing")
    # OpenCV applies the EXIF orientation by default; COLMAP and nerfstudio do not (module docstring).
    img = decode_rgb(np.fromfile(path, dtype=np.uint8))
    if img is None:
        raise SourceError(f"{path}: not a readable image")
    return img, exif_orientation(path)


def exif_orientation(path: Path) -> int:
    """The EXIF Orientation tag of an image file (1 = upright, also when there is none)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            value = im.getexif().get(EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 1
    try:
        return int(value)
    except (TypeError, ValueError):
        return 1


def frame_camera(
    intrinsics: tuple[float, float, float, float],
    source_size: tuple[float, float],
    image_size: tuple[int, int],
    c2w: np.ndarray,
    mode: str,
    where: str,
    source_desc: str,
    orientation: int = 1,
) -> Camera:
    """The camera of a stored ``image_size`` (w, h) frame made from a ``source_size`` frame with ``intrinsics``.

    ``mode`` is one of FRAME_RESIZE; ``where`` names the image, ``source_desc``
    says where the source size came from (both go into the refusal).
    """
    if mode not in FRAME_RESIZE:
        raise ValueError(f"frame resize must be one of {FRAME_RESIZE}, got {mode!r}")
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    W0, H0 = (float(v) for v in source_size)
    w, h = image_size
    src_aspect, img_aspect = W0 / H0, w / h
    if abs(img_aspect / src_aspect - 1.0) > ASPECT_TOL:
        found = f"stored frame is {w}x{h} (aspect {img_aspect:.3f}) but the camera's aspect is {src_aspect:.3f} ({source_desc})"
        if orientation != 1:
            raise SourceError(
                f"{where}: EXIF orientation {orientation} and {found}: the pixels are not the ones the poses were solved on "
                "(SynCam reads stored pixels, as COLMAP and nerfstudio do)"
            )
        if mode == "none":
            raise SourceError(
                f"{where}: {found}; if the frames were made from the camera's frames, say how with --frame-resize squash|center-crop"
            )
    if mode == "center-crop":
        s = max(w / W0, h / H0)
        x0, y0 = (W0 * s - w) / 2, (H0 * s - h) / 2
        return Camera(w, h, fx * s, fy * s, cx * s - x0, cy * s - y0, c2w)
    sx, sy = w / W0, h / H0
    return Camera(w, h, fx * sx, fy * sy, cx * sx, cy * sy, c2w)
