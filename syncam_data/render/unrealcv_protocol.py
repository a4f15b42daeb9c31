"""UnrealCV's replies and commands, as pure functions (no socket, no server): what the backend sends and how it reads the answers.

Everything here follows the server's own C++ (unrealcv/unrealcv, branch ``5.2``,
UnrealCV 1.0.1, and the UnrealZoo v1.1 builds derived from it):

- replies are ``ok``, a value, or ``error <message>``
  (``FExecStatus::GetMessage``); a command no handler matches gives ``error No
  handler found for URI '...'`` (``FCommandDispatcher::Exec`` at head) or ``error
  Can not find a handler for URI '...'`` (the same function before 2026-03);
- the dispatcher matches ``[float]`` with ``[-+]?\\d*[.]?\\d+``: numbers must be
  written without exponents (``fnum``);
- vectors and rotators are printed ``%.3f %.3f %.3f`` (``FStrFormatter``),
  camera FOV ``%f`` (horizontal, ``FCameraHandler::GetFOV``), annotation colours
  as ``FColor::ToString`` ``(R=..,G=..,B=..,A=..)``;
- ``vbp OBJECT FUNCTION args`` replies the function's out parameters as a JSON
  object of strings (``FAliasHandler::VExecWithOutput``, ``FJsonObjectBP``);
  SynCam's plugin functions return one FString holding a JSON object, so the
  reply is ``{"ReturnValue": "<json>"}`` (``plugin_reply``);
- lit images: BMP written by ``FImageUtil::ConvertToBmp`` (54-byte header, 32
  bits per pixel BGRA, top-down) or PNG (RGBA); depth: ``npy`` float32 (H, W) of
  plane depth in cm read from a half-float target (sky 65504), written by
  ``FSerializationUtils::Array2Npy``.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from syncam_data.cameras import Camera, ue_rotator_axes

# Unreal's depth target is half float: the sky reads as 65504 cm; anything this far is "empty".
SKY_DEPTH_CM = 65000.0
# The official client's get_mask treats colours within 3 of an object's colour as that object.
MASK_TOLERANCE = 3
NO_HANDLER = re.compile(r"^error\s+(No handler found for URI|Can not find a handler for URI)", re.I)


class ProtocolError(RuntimeError):
    """A reply that does not have the form its command promises."""


class PluginCallError(ProtocolError):
    """A SynCam plugin function was not called, or reported a failure."""


def as_text(reply: str | bytes) -> str:
    return reply if isinstance(reply, str) else reply.decode("utf-8", "replace")


def as_bytes(reply: str | bytes) -> bytes:
    # unrealcv.Client hands back str when a payload happens to decode as UTF-8 (possible for
    # small flat images); the decoding is lossless, so encoding restores the original bytes.
    return reply if isinstance(reply, bytes) else reply.encode("utf-8")


def is_error(reply: str | bytes | None) -> bool:
    return isinstance(reply, str) and reply.lstrip().lower().startswith("error")


def is_missing_handler(reply: str | bytes | None) -> bool:
    """Is this the dispatcher's answer to a command the server does not have?"""
    return isinstance(reply, str) and NO_HANDLER.match(reply.strip()) is not None


def fnum(v: float, digits: int = 4) -> str:
    """A number as UnrealCV's [float] pattern accepts it: fixed point, never an exponent."""
    text = f"{float(v):.{digits}f}"
    return "0." + "0" * digits if text.lstrip("-").strip("0.") == "" else text


def fnums(vals: Sequence[float], digits: int = 4) -> str:
    return " ".join(fnum(v, digits) for v in vals)


def parse_floats(reply: str | bytes, n: int, what: str) -> list[float]:
    text = as_text(reply)
    if is_error(text):
        raise ProtocolError(f"{what}: {text.strip()[:120]}")
    try:
        vals = [float(v) for v in text.split()[:n]]
    except ValueError:
        vals = []
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        raise ProtocolError(f"{what}: expected {n} numbers, got {text[:80]!r}")
    return vals


def parse_version(text: str) -> tuple[int, int, int] | None:
    """'1.0.1', 'v1.1.0' -> (1, 0, 1); None when there is no number (as ApiVersionManager.parse_version_tuple)."""
    parts = re.findall(r"\d+", text or "")
    if not parts:
        return None
    vals = [int(p) for p in parts[:3]] + [0, 0, 0]
    return vals[0], vals[1], vals[2]


def camera_count(reply: str | bytes, what: str = "vget /cameras") -> int:
    """Entries of ``vget /cameras``: sensor names (open-source) or CID ids (UnrealZoo); only their number matters."""
    text = as_text(reply)
    if is_error(text):
        raise ProtocolError(f"{what}: {text.strip()[:120]}")
    return len(text.split())


def parse_colour(reply: str | bytes) -> tuple[int, int, int] | None:
    """``(R=1,G=2,B=3,A=255)`` -> (1, 2, 3); None when the reply has no colour."""
    m = re.search(r"R=(\d+)\D+G=(\d+)\D+B=(\d+)", as_text(reply))
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def class_name_from_asset(path: str) -> str:
    """The UClass name ``vset /objects/spawn`` looks up for an asset path.

    ``/Game/Characters/BP_Hiker.BP_Hiker_C`` -> ``BP_Hiker_C``; a Blueprint asset
    (``/Game/X/BP_A.BP_A`` or ``/Game/X/BP_A``) -> its generated class ``BP_A_C``;
    a native class ``/Script/Engine.StaticMeshActor`` -> ``StaticMeshActor``.
    """
    obj = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else path.rstrip("/").rsplit("/", 1)[-1]
    if path.startswith("/Script/") or obj.endswith("_C"):
        return obj
    return obj + "_C"


def plugin_call(reply: str | bytes, what: str) -> dict[str, Any]:
    """The JSON object a SynCam plugin function returned through ``vbp`` (``"ok"`` true or false).

    vbp replies ``{"ReturnValue": "<the FString>"}``; an empty ReturnValue means
    vbp did not call the function: it could not pass an argument (a parameter
    declared ``const FString&`` is skipped, so the next one gets its token). A
    plugin built against the vbp rules never does that.
    """
    text = as_text(reply)
    if is_error(text):
        raise PluginCallError(f"{what}: {text.strip()[:200]}")
    try:
        outer = json.loads(text)
    except json.JSONDecodeError:
        raise PluginCallError(f"{what}: not a vbp JSON reply: {text[:120]!r}") from None
    if not isinstance(outer, dict) or "ReturnValue" not in outer:
        raise PluginCallError(f"{what}: no ReturnValue in {text[:120]!r}")
    value = outer["ReturnValue"]
    extra = sorted(k for k in outer if k != "ReturnValue")
    if value == "":
        raise PluginCallError(
            f"{what}: vbp did not call the function (empty ReturnValue"
            + (f"; parameters {extra} were skipped as reference/out parameters" if extra else "")
            + "): the plugin must take FString and numbers by value and return one FString"
        )
    try:
        data = json.loads(value)
    except (json.JSONDecodeError, TypeError):
        data = None
    if not isinstance(data, dict):
        raise PluginCallError(f"{what}: the plugin returned {str(value)[:120]!r}, not a JSON object")
    return data


def plugin_reply(reply: str | bytes, what: str) -> dict[str, Any]:
    """``plugin_call``'s object for a call that must succeed: ``"ok": false`` raises with the plugin's error."""
    data = plugin_call(reply, what)
    if data.get("ok") is not True:
        raise PluginCallError(f"{what}: {data.get('error', f'the plugin replied {data}')}")
    return data


def plugin_version(reply: str | bytes) -> str | None:
    """``GetSynCamVersion``'s version string, or None when the reply is not one."""
    text = as_text(reply)
    if is_error(text):
        return None
    try:
        outer = json.loads(text)
    except json.JSONDecodeError:
        return None
    value = outer.get("ReturnValue") if isinstance(outer, dict) else None
    return value.strip() if isinstance(value, str) and parse_version(value) else None


def rotation_gap(a: Sequence[float], b: Sequence[float]) -> float:
    """Largest axis difference between two rotators (angles may differ by 360° or at gimbal lock)."""
    return max(float(np.abs(x - y).max()) for x, y in zip(ue_rotator_axes(*a), ue_rotator_axes(*b)))


# --- images ---------------------------------------------------------------------------------


def _bmp_bgra(data: bytes) -> np.ndarray | None:
    """UnrealCV's own BMP (uncompressed 32-bpp, top-down) as a BGRA view of ``data``; None for any other image."""
    if len(data) < 54 or data[:2] != b"BM":
        return None
    off = struct.unpack_from("<I", data, 10)[0]
    size, w, h, planes, bpp, comp = struct.unpack_from("<IiiHHI", data, 14)
    if size < 40 or bpp != 32 or comp != 0 or h >= 0 or w <= 0 or len(data) < off + w * -h * 4:
        return None
    return np.frombuffer(data, np.uint8, count=w * -h * 4, offset=off).reshape(-h, w, 4)


def decode_image(data: bytes, what: str) -> np.ndarray:
    """BMP/PNG bytes -> RGB uint8 (UnrealCV sends BGR(A)); UnrealCV's BMP needs no decoder."""
    import cv2

    bgra = _bmp_bgra(data)
    if bgra is not None:
        return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ProtocolError(f"{what}: cannot decode the image ({len(data)} bytes, starts {data[:8]!r})")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3][..., ::-1])


def decode_mask(data: bytes, colours: dict[int, tuple[int, int, int]], what: str) -> np.ndarray:
    """An object-mask image (BMP/PNG bytes) -> instance ids (see ``decode_ids``), without an RGB copy for UnrealCV's BMP."""
    bgra = _bmp_bgra(data)
    if bgra is not None:
        return decode_ids(bgra, colours, order="bgr")
    return decode_ids(decode_image(data, what), colours)


def is_binary_payload(body: bytes) -> bool:
    """Is this reply one of UnrealCV's binary payloads (BMP whose header states its size, PNG, npy)?"""
    if body[:8] == b"\x89PNG\r\n\x1a\n" or body[:6] == b"\x93NUMPY":
        return True
    return body[:2] == b"BM" and len(body) >= 54 and struct.unpack_from("<I", body, 2)[0] == len(body)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a BMP or PNG from its header, without decoding."""
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack_from("<ii", data, 18)
        return w, abs(h)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack_from(">II", data, 16)
    return None


def decode_depth(data: bytes, cam: Camera, kind: str, what: str) -> np.ndarray:
    """UnrealCV depth npy (cm) -> z-depth in metres, inf where empty."""
    try:
        d = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise ProtocolError(f"{what}: not an npy array ({e})") from None
    if d.ndim == 3:
        d = d[..., 0]
    d = d.astype(np.float32, copy=False)
    out = np.where(d >= SKY_DEPTH_CM, np.float32(np.inf), d * np.float32(0.01))
    if kind == "point":  # distance along the ray -> distance along the optical axis
        g = cam.pixel_grid()
        out = out / np.sqrt(1.0 + ((g[..., 0] - cam.cx) / cam.fx) ** 2 + ((g[..., 1] - cam.cy) / cam.fy) ** 2)
    return out.astype(np.float32, copy=False)


def decode_ids(mask: np.ndarray, colours: dict[int, tuple[int, int, int]], order: str = "rgb") -> np.ndarray:
    """Object-mask colours within MASK_TOLERANCE of a subject's (r, g, b) colour -> its instance id; 0 elsewhere.

    ``mask`` is (H, W, 3 or 4) in ``order`` ("rgb", or "bgr" for UnrealCV's BGRA
    BMP). Per channel, a 256-entry table gives the subjects whose colour is within
    the tolerance; a pixel's id is the last subject matching on all three.
    """
    ids = np.zeros(mask.shape[:2], np.uint8)
    items = list(colours.items())
    for start in range(0, len(items), 8):  # eight subjects per bit table
        chunk = items[start : start + 8]
        luts = np.zeros((3, 256), np.uint8)
        for bit, (_, c) in enumerate(chunk):
            for ch in range(3):
                luts[ch, max(0, c[ch] - MASK_TOLERANCE) : min(255, c[ch] + MASK_TOLERANCE) + 1] |= np.uint8(1 << bit)
        planes = (0, 1, 2) if order == "rgb" else (2, 1, 0)
        bits = luts[0][mask[..., planes[0]]] & luts[1][mask[..., planes[1]]] & luts[2][mask[..., planes[2]]]
        to_id = np.zeros(256, np.uint8)
        for value in range(1, 1 << len(chunk)):
            to_id[value] = chunk[value.bit_length() - 1][0]
        hit = to_id[bits]
        ids = np.where(hit > 0, hit, ids)
    return ids


def mask_colour(instance_id: int) -> tuple[int, int, int]:
    """A saturated, distinct object-mask colour per subject instance id."""
    return (255, (instance_id * 67) % 256, (255 - instance_id * 29) % 256)
