"""The canonical camera (docs/cameras.md, Contract 1) and every conversion to and from it.

World: right-handed, Z up, metres. Camera axes: OpenCV (x right, y down,
z forward). Pose: camera-to-world ``c2w`` = ``[R|t]``. Intrinsics are in
pixels of the stored media, in *continuous* pixel coordinates: the image's
top-left corner is (0, 0) and pixel (i, j) covers [i, i+1) x [j, j+1), so a
centred principal point is (W/2, H/2) and resizing scales fx, fy, cx, cy.

See docs/cameras.md for figures and the derivation of each conversion.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from syncam_data.ids import check_id

# Unreal Engine's world is left-handed (X forward, Y right, Z up); mirroring Y
# turns it into our right-handed Z-up world.
UE_MIRROR = np.diag([1.0, -1.0, 1.0])
# OpenGL / Blender / nerfstudio cameras look along -z with +y up; flipping the
# camera's y and z axes gives OpenCV axes (right-multiply c2w).
GL_TO_CV = np.diag([1.0, -1.0, -1.0])

_ORTHO_TOL = 1e-4


class CameraError(ValueError):
    """A pose or intrinsics that violates Contract 1."""


def _as_pose(c2w: Any) -> np.ndarray:
    m = np.asarray(c2w, dtype=np.float64)
    if m.shape == (12,):
        m = m.reshape(3, 4)
    elif m.shape == (4, 4):
        m = m[:3]
    if m.shape != (3, 4):
        raise CameraError(f"c2w must be 3x4, 4x4 or 12 numbers, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise CameraError("c2w contains NaN or Inf")
    return m


def check_rotation(R: np.ndarray, tol: float = _ORTHO_TOL, what: str = "rotation") -> None:
    """Raise CameraError unless R is orthonormal with determinant +1."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3) or not np.all(np.isfinite(R)):
        raise CameraError(f"{what} must be a finite 3x3 matrix")
    err = np.abs(R.T @ R - np.eye(3)).max()
    if err > tol:
        raise CameraError(f"{what} is not orthonormal (max |R^T R - I| = {err:.2e})")
    det = np.linalg.det(R)
    if abs(det - 1.0) > tol * 10:
        raise CameraError(f"{what} has determinant {det:+.4f}, expected +1 (a mirrored or scaled axis?)")


def orthonormalize(R: np.ndarray) -> np.ndarray:
    """Nearest rotation (SVD); used to clean up 6-digit matrices from text files."""
    U, _, Vt = np.linalg.svd(np.asarray(R, dtype=np.float64))
    Q = U @ Vt
    if np.linalg.det(Q) < 0:
        U[:, -1] *= -1
        Q = U @ Vt
    return Q


@dataclass
class Camera:
    """A pinhole camera: intrinsics in pixels of the stored media, OpenCV c2w."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    c2w: np.ndarray = field(default_factory=lambda: np.hstack([np.eye(3), np.zeros((3, 1))]))

    def __post_init__(self) -> None:
        self.c2w = _as_pose(self.c2w)
        self.width, self.height = int(self.width), int(self.height)
        self.fx, self.fy, self.cx, self.cy = (float(v) for v in (self.fx, self.fy, self.cx, self.cy))
        if self.width <= 0 or self.height <= 0:
            raise CameraError(f"image size must be positive, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0) or not all(map(math.isfinite, (self.fx, self.fy, self.cx, self.cy))):
            raise CameraError(f"invalid intrinsics fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy}")

    # --- basic views -----------------------------------------------------
    @property
    def R(self) -> np.ndarray:
        return self.c2w[:, :3]

    @property
    def t(self) -> np.ndarray:
        return self.c2w[:, 3]

    position = t

    @property
    def forward(self) -> np.ndarray:
        """Optical axis (camera +z) in world coordinates."""
        return self.c2w[:, 2]

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        return (self.fx, self.fy, self.cx, self.cy)

    def c2w_4x4(self) -> np.ndarray:
        m = np.eye(4)
        m[:3] = self.c2w
        return m

    def w2c(self) -> np.ndarray:
        """World-to-camera 3x4."""
        R_t = self.R.T
        return np.hstack([R_t, (-R_t @ self.t)[:, None]])

    def c2w12(self) -> list[float]:
        return [float(v) for v in self.c2w.reshape(-1)]

    def field_of_view(self) -> tuple[float, float]:
        """(horizontal, vertical) field of view in degrees."""
        return (
            math.degrees(2 * math.atan(self.width / (2 * self.fx))),
            math.degrees(2 * math.atan(self.height / (2 * self.fy))),
        )

    def validate(self, tol: float = _ORTHO_TOL) -> None:
        check_rotation(self.R, tol, what="c2w rotation")

    # --- geometry --------------------------------------------------------
    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64)
        return (p - self.t) @ self.R

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N,3) -> (pixel coords (N,2), z-depth (N,)). z <= 0 is behind."""
        pc = self.world_to_camera(points)
        z = pc[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.fx * pc[..., 0] / z + self.cx
            v = self.fy * pc[..., 1] / z + self.cy
        return np.stack([u, v], axis=-1), z

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixel coords (N,2) and z-depth (N,) -> world points (N,3)."""
        uv = np.asarray(uv, dtype=np.float64)
        d = np.asarray(depth, dtype=np.float64)
        x = (uv[..., 0] - self.cx) / self.fx * d
        y = (uv[..., 1] - self.cy) / self.fy * d
        pc = np.stack([x, y, d], axis=-1)
        return pc @ self.R.T + self.t

    def pixel_grid(self) -> np.ndarray:
        """Centres of all pixels, shape (H, W, 2), continuous coordinates."""
        us = np.arange(self.width) + 0.5
        vs = np.arange(self.height) + 0.5
        uu, vv = np.meshgrid(us, vs)
        return np.stack([uu, vv], axis=-1)

    # --- media edits -----------------------------------------------------
    def resized(self, width: int, height: int) -> Camera:
        sx, sy = width / self.width, height / self.height
        return Camera(width, height, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, self.c2w.copy())

    def cropped(self, x0: float, y0: float, width: int, height: int) -> Camera:
        return Camera(width, height, self.fx, self.fy, self.cx - x0, self.cy - y0, self.c2w.copy())

    def resize_center_crop(self, width: int, height: int) -> Camera:
        """Scale so the image covers (width, height), then crop the centre (as the loader does)."""
        s = max(width / self.width, height / self.height)
        rw, rh = max(width, round(self.width * s)), max(height, round(self.height * s))
        return self.resized(rw, rh).cropped((rw - width) / 2, (rh - height) / 2, width, height)

    # --- serialization (cameras.json entries) ----------------------------
    def to_dict(self, **extra: Any) -> dict[str, Any]:
        d: dict[str, Any] = {}
        d.update(extra)
        d.update(
            width=self.width,
            height=self.height,
            fx=self.fx,
            fy=self.fy,
            cx=self.cx,
            cy=self.cy,
            c2w=self.c2w12(),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Camera:
        try:
            return cls(d["width"], d["height"], d["fx"], d["fy"], d["cx"], d["cy"], d["c2w"])
        except KeyError as e:
            raise CameraError(f"camera entry is missing key {e.args[0]!r}") from None


# --- intrinsics helpers ------------------------------------------------------


def focal_from_hfov(width: int, hfov_deg: float) -> float:
    """Unreal's FOV is horizontal: fx = W / (2 tan(hfov/2))."""
    if not 0 < hfov_deg < 180:
        raise CameraError(f"horizontal FOV must be in (0, 180) degrees, got {hfov_deg}")
    return width / (2.0 * math.tan(math.radians(hfov_deg) / 2.0))


def hfov_from_focal(width: int, fx: float) -> float:
    return math.degrees(2.0 * math.atan(width / (2.0 * fx)))


def focal_from_filmback(width: int, focal_mm: float, sensor_width_mm: float) -> float:
    """Cine camera: fx = focal_mm * W / sensor_width_mm (square pixels)."""
    if focal_mm <= 0 or sensor_width_mm <= 0:
        raise CameraError(f"focal length and sensor width must be positive, got {focal_mm}, {sensor_width_mm}")
    return focal_mm * width / sensor_width_mm


def intrinsics_from_hfov(width: int, height: int, hfov_deg: float) -> tuple[float, float, float, float]:
    f = focal_from_hfov(width, hfov_deg)
    return f, f, width / 2.0, height / 2.0


def intrinsics_from_filmback(
    width: int, height: int, focal_mm: float, sensor_width_mm: float
) -> tuple[float, float, float, float]:
    f = focal_from_filmback(width, focal_mm, sensor_width_mm)
    return f, f, width / 2.0, height / 2.0


# --- look-at and rigs ---------------------------------------------------------


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV c2w (3x4) for a camera at ``eye`` looking at ``target`` with world ``up`` on screen-up."""
    eye_a, target_a, up_a = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target_a - eye_a
    n = np.linalg.norm(z)
    if n < 1e-12:
        raise CameraError("look_at: eye and target coincide")
    z /= n
    x = np.cross(z, up_a)
    if np.linalg.norm(x) < 1e-8:  # looking straight along `up`: pick any right vector
        x = np.cross(z, np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.hstack([np.stack([x, y, z], axis=1), eye_a[:, None]])


def spherical_position(
    center: Sequence[float], distance: float, elevation_deg: float, azimuth_deg: float
) -> np.ndarray:
    """Point at ``distance`` from ``center``; azimuth from +X towards +Y, elevation above the XY plane."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    d = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return np.asarray(center, dtype=np.float64) + distance * d


@dataclass
class RigSpec:
    """The paper's hemisphere rig: cameras at random distance/elevation/azimuth, looking at a centre."""

    num_cameras: int = 36
    distance: tuple[float, float] = (3.5, 9.0)
    elevation: tuple[float, float] = (0.0, 45.0)
    azimuth: tuple[float, float] = (0.0, 360.0)

    def __post_init__(self) -> None:
        if self.num_cameras < 1:
            raise CameraError("rig needs at least one camera")
        for name in ("distance", "elevation", "azimuth"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise CameraError(f"rig {name} range is empty: ({lo}, {hi})")
        if self.distance[0] <= 0:
            raise CameraError("rig distance must be positive")
        if not (-90 <= self.elevation[0] and self.elevation[1] <= 90):
            raise CameraError("rig elevation must lie in [-90, 90] degrees")


def sample_rig(
    rig: RigSpec,
    center: Sequence[float],
    width: int,
    height: int,
    hfov_deg: float,
    rng: np.random.Generator | int,
) -> list[tuple[Camera, dict[str, float]]]:
    """Sample ``rig.num_cameras`` cameras looking at ``center``.

    Returns (camera, placement) pairs, where placement records distance,
    elevation and azimuth in degrees so a spec can be reproduced or edited.
    """
    rng = np.random.default_rng(rng)
    fx, fy, cx, cy = intrinsics_from_hfov(width, height, hfov_deg)
    out = []
    for _ in range(rig.num_cameras):
        d = float(rng.uniform(*rig.distance))
        el = float(rng.uniform(*rig.elevation))
        az = float(rng.uniform(*rig.azimuth))
        eye = spherical_position(center, d, el, az)
        out.append(
            (
                Camera(width, height, fx, fy, cx, cy, look_at(eye, center)),
                {"distance": d, "elevation": el, "azimuth": az},
            )
        )
    return out


# --- relative poses (model input) and angles --------------------------------


def relative_pose(c2w_ref: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """inv(c2w_ref) . c2w as 3x4."""
    a, b = _as_pose(c2w_ref), _as_pose(c2w)
    Ra, ta = a[:, :3], a[:, 3]
    R = Ra.T @ b[:, :3]
    t = Ra.T @ (b[:, 3] - ta)
    return np.hstack([R, t[:, None]])


def relative_poses(c2ws: Iterable[np.ndarray], translation_scale: float = 1.0) -> np.ndarray:
    """Each view relative to view 0, flattened to 12 numbers; translations divided by ``translation_scale``.

    Returns an (n, 12) float array; row 0 is the identity.
    """
    poses = [_as_pose(c) for c in c2ws]
    if not poses:
        raise CameraError("relative_poses needs at least one camera")
    if translation_scale <= 0:
        raise CameraError("translation_scale must be positive")
    out = np.empty((len(poses), 12))
    for i, p in enumerate(poses):
        rel = relative_pose(poses[0], p)
        rel[:, 3] /= translation_scale
        out[i] = rel.reshape(-1)
    return out


def relative_angle(c2w_a: np.ndarray, c2w_b: np.ndarray) -> float:
    """Angle in degrees between two cameras' optical axes."""
    za, zb = _as_pose(c2w_a)[:, 2], _as_pose(c2w_b)[:, 2]
    c = float(np.dot(za, zb) / (np.linalg.norm(za) * np.linalg.norm(zb)))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


# --- Unreal Engine -------------------------------------------------------------


def ue_rotator_axes(pitch: float, yaw: float, roll: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of FRotationMatrix(pitch, yaw, roll): forward, right, up in UE world coordinates."""
    p, y, r = (math.radians(a) for a in (pitch, yaw, roll))
    cp, sp, cy, sy, cr, sr = math.cos(p), math.sin(p), math.cos(y), math.sin(y), math.cos(r), math.sin(r)
    forward = np.array([cp * cy, cp * sy, sp])
    right = np.array([sr * sp * cy - cr * sy, sr * sp * sy + cr * cy, -sr * cp])
    up = np.array([-(cr * sp * cy + sr * sy), cy * sr - cr * sp * sy, cr * cp])
    return forward, right, up


def c2w_from_ue_axes(
    forward: np.ndarray, right: np.ndarray, up: np.ndarray, location_cm: Sequence[float]
) -> np.ndarray:
    """Canonical c2w from UE axis vectors and a location in cm (left-handed world)."""
    S = UE_MIRROR
    R = np.stack([S @ np.asarray(right, float), -(S @ np.asarray(up, float)), S @ np.asarray(forward, float)], axis=1)
    t = S @ np.asarray(location_cm, dtype=np.float64) / 100.0
    return np.hstack([R, t[:, None]])


def c2w_from_ue(location_cm: Sequence[float], rotation_pyr_deg: Sequence[float]) -> np.ndarray:
    """UE location (cm) and rotator (pitch, yaw, roll in degrees) -> canonical c2w (3x4, metres)."""
    f, r, u = ue_rotator_axes(*rotation_pyr_deg)
    return c2w_from_ue_axes(f, r, u, location_cm)


def ue_from_c2w(c2w: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Inverse of :func:`c2w_from_ue`: (location in cm, (pitch, yaw, roll) in degrees)."""
    m = _as_pose(c2w)
    S = UE_MIRROR
    right, up, forward = S @ m[:, 0], -(S @ m[:, 1]), S @ m[:, 2]
    location = S @ m[:, 3] * 100.0
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, forward[2]))))
    yaw = math.degrees(math.atan2(forward[1], forward[0]))
    # right.z = -sin(roll) cos(pitch), up.z = cos(roll) cos(pitch)
    roll = math.degrees(math.atan2(-right[2], up[2]))
    return location, (pitch, yaw, roll)


def camera_from_ue(
    location_cm: Sequence[float],
    rotation_pyr_deg: Sequence[float],
    width: int,
    height: int,
    hfov_deg: float | None = None,
    intrinsics: Sequence[float] | None = None,
) -> Camera:
    """A canonical Camera from a UE pose plus either a horizontal FOV or explicit (fx, fy, cx, cy)."""
    if intrinsics is None:
        if hfov_deg is None:
            raise CameraError("camera_from_ue needs hfov_deg or intrinsics")
        intrinsics = intrinsics_from_hfov(width, height, hfov_deg)
    return Camera(width, height, *intrinsics, c2w=c2w_from_ue(location_cm, rotation_pyr_deg))


def ue_raw_pose(location_cm: Sequence[float], rotation_pyr_deg: Sequence[float], **extra: Any) -> dict[str, Any]:
    """The backend's own pose, kept beside the converted one in cameras.json."""
    return {
        "convention": "unreal",
        "location_cm": [float(v) for v in location_cm],
        "rotation_pyr_deg": [float(v) for v in rotation_pyr_deg],
        **extra,
    }


def parse_ue_row_matrix(text: str) -> np.ndarray:
    """Parse SynCamVideo's "[r00 r01 r02 0] [r10 ...] [r20 ...] [tx ty tz 1] " into a 4x4 array."""
    rows = [r.strip() for r in text.strip().split("]") if r.strip()]
    try:
        m = np.array([[float(v) for v in r.lstrip("[").split()] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise CameraError(f"cannot parse UE matrix {text!r}: {e}") from None
    if m.shape != (4, 4):
        raise CameraError(f"UE matrix must be 4x4, got {m.shape} from {text!r}")
    return m


def c2w_from_ue_row_matrix(m: np.ndarray | str) -> np.ndarray:
    """SynCamVideo / MultiCamVideo row-vector 4x4 (rows: forward, right, up, translation cm) -> canonical c2w."""
    if isinstance(m, str):
        m = parse_ue_row_matrix(m)
    m = np.asarray(m, dtype=np.float64)
    forward, right, up = (orthonormal_row(m[i, :3]) for i in range(3))
    c2w = c2w_from_ue_axes(forward, right, up, m[3, :3])
    c2w[:, :3] = orthonormalize(c2w[:, :3])
    return c2w


def orthonormal_row(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    if n < 1e-9:
        raise CameraError("UE matrix has a zero axis row")
    return v / n


# --- OpenGL / Blender / nerfstudio ---------------------------------------------


def c2w_from_opengl(c2w_gl: np.ndarray) -> np.ndarray:
    """OpenGL c2w (camera looks -z, +y up) -> OpenCV c2w: right-multiply by diag(1,-1,-1)."""
    m = _as_pose(c2w_gl).copy()
    m[:, :3] = m[:, :3] @ GL_TO_CV
    return m


def c2w_to_opengl(c2w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`c2w_from_opengl` (the flip is its own inverse)."""
    return c2w_from_opengl(c2w)


c2w_from_blender = c2w_from_opengl
c2w_to_blender = c2w_to_opengl


# --- RealEstate10K ---------------------------------------------------------------


def parse_realestate10k_line(line: str, width: int, height: int) -> tuple[int, Camera]:
    """One RealEstate10K pose line -> (timestamp_us, Camera for a width x height image).

    Line: timestamp, fx fy cx cy (normalized by image width/height), two zeros,
    then a row-major 3x4 world-to-camera in OpenCV axes.
    """
    parts = line.split()
    if len(parts) != 19:
        raise CameraError(f"expected 19 numbers, got {len(parts)}")
    try:
        ts = int(parts[0])
        vals = [float(v) for v in parts[1:]]
    except ValueError as e:
        raise CameraError(f"not a number: {e}") from None
    fx, fy, cx, cy = vals[0:4]
    w2c = np.array(vals[6:18]).reshape(3, 4)
    R_wc = w2c[:, :3]
    check_rotation(R_wc, tol=1e-3, what="world-to-camera rotation")
    R_wc = orthonormalize(R_wc)
    R = R_wc.T
    t = -R @ w2c[:, 3]
    cam = Camera(width, height, fx * width, fy * height, cx * width, cy * height, np.hstack([R, t[:, None]]))
    return ts, cam


def format_realestate10k_line(timestamp_us: int, cam: Camera) -> str:
    """Inverse of :func:`parse_realestate10k_line`."""
    w2c = cam.w2c()
    vals = [
        cam.fx / cam.width,
        cam.fy / cam.height,
        cam.cx / cam.width,
        cam.cy / cam.height,
        0.0,
        0.0,
        *w2c.reshape(-1),
    ]
    return " ".join([str(int(timestamp_us))] + [f"{v:.9f}" for v in vals])


# --- cameras.json ------------------------------------------------------------------

# The cameras of a scene folder, a frame set or a generation (Contract 2): {"cameras": [{"id", "width",
# "height", "fx", "fy", "cx", "cy", "c2w": [12 floats], ...}, ...]}.
CAMERAS_JSON = "cameras.json"


def read_cameras_json(path: Path) -> list[tuple[str, Camera, dict[str, Any]]]:
    """[(id, Camera, full entry)] from a cameras.json (render output or frame set)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read cameras.json ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras", []), list):
        raise ValueError(f"{path}: expected an object with a 'cameras' list")
    out = []
    for i, e in enumerate(data.get("cameras", [])):
        try:
            if not isinstance(e, dict):
                raise ValueError("not an object")
            out.append((check_id(e["id"], "camera id", str(path)), Camera.from_dict(e), e))
        except KeyError as err:
            raise ValueError(f"{path}: camera entry {i}: missing key {err}") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: camera entry {i}: {err}") from None
    return out
