"""UnrealCV reply parsing and command formatting (syncam_data.render.unrealcv_protocol), without a server.

The replies here are written the way the server's C++ writes them (unrealcv
branch 5.2): FExecStatus messages, FStrFormatter's '%.3f', FColor::ToString,
FAliasHandler::VExecWithOutput's JSON of out parameters (pretty-printed by
UE's default JSON writer), FImageUtil::ConvertToBmp's 32-bpp top-down BMP.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from syncam_data.cameras import Camera
from syncam_data.render.unrealcv_protocol import (
    PluginCallError,
    ProtocolError,
    camera_count,
    class_name_from_asset,
    decode_depth,
    decode_ids,
    decode_image,
    fnum,
    fnums,
    image_size,
    is_binary_payload,
    is_error,
    is_missing_handler,
    parse_colour,
    parse_floats,
    parse_version,
    plugin_call,
    plugin_reply,
    plugin_version,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unrealcv_standin import encode_bmp, encode_npy  # noqa: E402


def vbp_json(**outputs: str) -> str:
    """FJsonObjectBP(TMap<FString, FString>).ToString(): UE's pretty JSON writer (tabs, newlines)."""
    return "{\n" + ",\n".join(f"\t{json.dumps(k)}: {json.dumps(v)}" for k, v in outputs.items()) + "\n}"


def test_missing_handler_messages_of_both_server_generations():
    assert is_missing_handler("error No handler found for URI 'vget /unrealcv/commands'")  # 5.2 at head
    assert is_missing_handler(
        "error Can not find a handler for URI 'vset /objects/spawn_from_path /Game/A.A_C'"
    )  # before 2026-03
    # Errors from a handler that exists are not "missing": that is how the backend probes harmlessly.
    assert not is_missing_handler("error Invalid sensor id")
    assert not is_missing_handler("error Cannot find object")
    assert not is_missing_handler("ok")
    assert is_error("error Argument Invalid") and not is_error("1.0.1") and not is_error(b"error")


def test_numbers_are_never_written_with_exponents():
    # FCommandDispatcher's [float] is [-+]?\d*[.]?\d+: "1e-05" would not match any command.
    float_rx = re.compile(r"[-+]?\d*[.]?\d+")
    for v in (1e-5, -1e-7, 123456.789, -0.0, 0.0, 2.5e-10, -45.0):
        text = fnum(v)
        assert float_rx.fullmatch(text), text
        assert float(text) == pytest.approx(v, abs=1e-4)
    assert fnum(-1e-7) == "0.0000"
    assert fnums([1, -2.5, 1e-9]) == "1.0000 -2.5000 0.0000"


def test_reply_parsers():
    assert parse_floats("120.000 -35.500 10.250", 3, "loc") == [120.0, -35.5, 10.25]
    with pytest.raises(ProtocolError, match="loc: error Cannot find object"):
        parse_floats("error Cannot find object", 3, "loc")
    with pytest.raises(ProtocolError, match="expected 3 numbers"):
        parse_floats("1.0 2.0", 3, "loc")
    assert (
        parse_version("1.0.1") == (1, 0, 1)
        and parse_version("v1.1.0") == (1, 1, 0)
        and parse_version("unknown") is None
    )
    # GetCameraList: sensor names with a trailing space (open-source), CID ids (UnrealZoo)
    assert camera_count("PawnSensor FusionCameraSensor FusionCameraSensor ") == 3
    assert camera_count("CID-0001 CID-0002 ") == 2
    assert parse_colour("(R=255,G=67,B=226,A=255)") == (255, 67, 226)
    assert parse_colour("error Cannot find object") is None


def test_class_names_from_asset_paths():
    assert class_name_from_asset("/Game/Characters/BP_Hiker.BP_Hiker_C") == "BP_Hiker_C"
    assert class_name_from_asset("/Game/Characters/BP_Hiker.BP_Hiker") == "BP_Hiker_C"  # the Blueprint asset
    assert class_name_from_asset("/Game/Characters/BP_Hiker") == "BP_Hiker_C"
    assert class_name_from_asset("/Script/Engine.StaticMeshActor") == "StaticMeshActor"


def test_plugin_replies_tell_not_called_from_failed_from_ok():
    ok = vbp_json(ReturnValue=json.dumps({"ok": True, "time": 1.25, "clip_length": 2.0}))
    assert plugin_reply(ok, "SetAnimationPose")["time"] == 1.25
    failed = vbp_json(ReturnValue=json.dumps({"ok": False, "error": "no actor named 'X'"}))
    assert plugin_call(failed, "f")["ok"] is False  # the function ran and said no
    with pytest.raises(PluginCallError, match="no actor named 'X'"):
        plugin_reply(failed, "f")
    # A function declared with `const FString&`: vbp skips that parameter, the import of the next one
    # fails, the function is not called, and the reply still lists the (empty) reference parameter.
    skipped = vbp_json(ActorName="", ReturnValue="")
    with pytest.raises(PluginCallError, match=r"vbp did not call the function .*\['ActorName'\] were skipped"):
        plugin_call(skipped, "SetActorTransformCm")
    # A bool return comes back empty even when the function ran.
    with pytest.raises(PluginCallError, match="vbp did not call"):
        plugin_call(vbp_json(ReturnValue=""), "f")
    with pytest.raises(PluginCallError, match="not a JSON object"):
        plugin_call(vbp_json(ReturnValue="0.000000"), "GetWorldTime")
    with pytest.raises(PluginCallError, match="Can not find actor"):
        plugin_call("error Can not find actor with id 'SynCamFrameSync'", "f")
    assert plugin_version(vbp_json(ReturnValue="2.0.0")) == "2.0.0"
    assert plugin_version("error Can not find actor with id 'SynCamFrameSync'") is None


def test_unrealcv_bmp_decodes_without_a_decoder_and_matches_opencv():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    data = encode_bmp(rgb)
    assert struct.unpack_from("<iiHH", data, 18) == (5, -7, 1, 32)  # top-down, 32 bpp: as UnrealCV writes it
    assert image_size(data) == (5, 7)
    np.testing.assert_array_equal(decode_image(data, "t"), rgb)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(bgr[..., ::-1], rgb)
    ok, png = cv2.imencode(".png", np.dstack([rgb[..., ::-1], np.full((7, 5), 255, np.uint8)]))
    assert image_size(png.tobytes()) == (5, 7)
    np.testing.assert_array_equal(decode_image(png.tobytes(), "t"), rgb)
    with pytest.raises(ProtocolError, match="cannot decode"):
        decode_image(b"error Invalid sensor id", "t")


def test_depth_sky_and_ids_with_tolerance():
    cam = Camera(4, 2, 2.0, 2.0, 2.0, 1.0)
    cm = np.array([[100.0, 250.0, 65504.0, 70000.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    d = decode_depth(encode_npy(cm), cam, "plane", "t")
    assert d.dtype == np.float32 and d.shape == (2, 4)
    np.testing.assert_allclose(d[0, :2], [1.0, 2.5])
    assert np.isinf(d[0, 2:]).all()
    mask = np.zeros((2, 3, 3), np.uint8)
    mask[0, 0] = (255, 67, 226)
    mask[0, 1] = (253, 70, 223)  # within 3: anti-aliased or rounded
    mask[0, 2] = (251, 67, 226)  # 4 off: not the subject
    mask[1, 0] = (255, 134, 197)
    ids = decode_ids(mask, {1: (255, 67, 226), 2: (255, 134, 197)})
    np.testing.assert_array_equal(ids, [[1, 1, 0], [2, 0, 0]])


def test_mask_ids_from_unrealcv_bmp_match_the_per_colour_definition():
    """The table lookup equals |pixel - colour| <= 3 on every channel, last matching subject wins, for many subjects."""
    from syncam_data.render.unrealcv_protocol import MASK_TOLERANCE, decode_mask, mask_colour

    rng = np.random.default_rng(1)
    colours = {i: mask_colour(i) for i in range(1, 12)}  # more than one 8-subject table
    base = np.array([colours[int(i)] for i in rng.integers(1, 12, size=600)], np.int16).reshape(20, 30, 3)
    rgb = np.clip(base + rng.integers(-5, 6, size=base.shape), 0, 255).astype(np.uint8)
    want = np.zeros((20, 30), np.uint8)
    for iid, c in colours.items():
        want[np.all(np.abs(rgb.astype(np.int16) - np.array(c)) <= MASK_TOLERANCE, axis=-1)] = iid
    np.testing.assert_array_equal(decode_ids(rgb, colours), want)
    np.testing.assert_array_equal(decode_mask(encode_bmp(rgb), colours, "mask"), want)
    assert 0 < (want > 0).mean() < 1


def test_binary_payloads_are_recognized_by_their_headers_and_text_is_not():
    rgb = np.zeros((4, 6, 3), np.uint8)
    assert is_binary_payload(encode_bmp(rgb))
    assert is_binary_payload(encode_npy(np.zeros((4, 6), np.float32)))
    assert is_binary_payload(cv2.imencode(".png", rgb)[1].tobytes())
    # Text replies stay text, also one that starts like a BMP (an actor named BMW_...).
    for text in (b"BMW_Car_1 BMW_Car_2 ", b"ok", b"error Invalid sensor id", b'{"ReturnValue": ""}', b""):
        assert not is_binary_payload(text)


def test_the_client_keeps_images_as_bytes_and_text_as_str():
    """Our unrealcv.Client subclass reads replies like the stock one, without decoding images as UTF-8."""
    from syncam_data.render.unrealcv_server import _client_class

    c = _client_class()(("127.0.0.1", 1), "inet")
    c.recv_message_id = 7
    bmp = encode_bmp(np.full((4, 6, 3), 65, np.uint8))  # all 'A': decodes as UTF-8, but it is an image
    assert c.raw_message_handler(b"7:" + bmp) == bmp
    assert c.raw_message_handler(b"7:1.000 2.000 3.000") == "1.000 2.000 3.000"
    assert c.raw_message_handler(b"7:\xff\xfe") == b"\xff\xfe"
    with pytest.raises(AssertionError, match="Message ID mismatch"):
        c.raw_message_handler(b"8:ok")
