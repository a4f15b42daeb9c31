"""Video I/O: H.264 round trips, frame-exact random access, probing, bad files and limits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from syncam_data import video as V
from tests.conftest import smooth_frames


def nearest(frame, frames):
    errs = [np.abs(frame.astype(int) - f.astype(int)).mean() for f in frames]
    return int(np.argmin(errs)), min(errs)


def test_encode_decode_round_trip_in_memory():
    frames = smooth_frames(12, 48, 64)
    blob = V.encode(frames, fps=12)
    assert isinstance(blob, bytes) and blob[4:8] == b"ftyp"
    info = V.probe(blob)
    assert (info.num_frames, info.width, info.height, info.codec) == (12, 64, 48, "h264")
    assert info.fps == pytest.approx(12)
    out = V.decode(blob)
    assert out.shape == frames.shape
    assert np.abs(out.astype(int) - frames.astype(int)).mean() < 3


def test_decode_selected_indices_are_the_right_frames(tmp_path):
    frames = smooth_frames(60, 32, 48, seed=3)
    path = V.encode(frames, tmp_path / "v.mp4", fps=30, gop=10)
    want = [45, 3, 3, 17, 59, 0]
    out = V.decode(path, want)
    assert out.shape == (6, 32, 48, 3)
    for got, i in zip(out, want):
        j, err = nearest(got, frames)
        assert j == i and err < 4
    with pytest.raises(V.VideoError, match="not in video"):
        V.decode(path, [60])


def test_odd_sizes_are_padded_to_even():
    frames = smooth_frames(3, 31, 45)
    info = V.probe(V.encode(frames))
    assert (info.width, info.height) == (46, 32)


def test_decode_resizes_while_converting():
    frames = smooth_frames(4, 48, 64)
    out = V.decode(V.encode(frames), [1, 2], size=(32, 24))
    assert out.shape == (2, 24, 32, 3)


def test_atomic_write_leaves_no_temp(tmp_path):
    V.encode(smooth_frames(2), tmp_path / "a.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def test_encode_is_deterministic():
    frames = smooth_frames(6)
    assert V.encode(frames) == V.encode(frames)


def test_bad_files_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(V.VideoError, match="empty.mp4: file is empty"):
        V.probe(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video at all" * 20)
    with pytest.raises(V.VideoError, match="notes.mp4"):
        V.decode(text)
    with pytest.raises(V.VideoError, match="no such file"):
        V.probe(tmp_path / "missing.mp4")
    good = V.encode(smooth_frames(20))
    truncated = tmp_path / "trunc.mp4"
    truncated.write_bytes(good[: len(good) // 3])
    with pytest.raises(V.VideoError, match="trunc.mp4"):
        V.decode(truncated)


def test_limits_stop_untrusted_files():
    blob = V.encode(smooth_frames(10, 48, 64))
    with pytest.raises(V.VideoError, match="pixel limit"):
        V.probe(blob, limits=V.VideoLimits(max_pixels=1000))
    with pytest.raises(V.VideoError, match="frames exceed"):
        V.decode(blob, limits=V.VideoLimits(max_frames=5))
    with pytest.raises(V.VideoError, match="memory limit"):
        V.decode(blob, limits=V.VideoLimits(max_decoded_bytes=10_000))


def test_iter_frames_every_k():
    frames = smooth_frames(10)
    got = list(V.iter_frames(V.encode(frames), every=3))
    assert [i for i, _ in got] == [0, 3, 6, 9]


def test_encode_rejects_wrong_input():
    with pytest.raises(V.VideoError):
        V.encode(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(V.VideoError):
        V.encode(np.zeros((2, 8, 8, 3), np.float32))


def test_decode_into_writes_the_chosen_frames_planar_and_cropped(tmp_path):
    frames = smooth_frames(60, 48, 64, seed=5)
    path = V.encode(frames, tmp_path / "v.mp4", fps=30, gop=10)
    want = [45, 3, 3, 17, 59, 0]  # far apart (seeks), out of order, repeated
    out = np.full((len(want), 3, 20, 30), 7, np.uint8)
    V.decode_into(path, want, out, size=(40, 30), offset=(5, 3))
    scaled = np.zeros((len(want), 3, 30, 40), np.uint8)
    V.decode_into(path, want, scaled, size=(40, 30))
    assert np.array_equal(out, scaled[:, :, 3:23, 5:35])  # the window at the offset, exactly
    ref = np.stack([cv2.resize(f, (40, 30), interpolation=cv2.INTER_AREA) for f in V.decode(path, want)])
    diff = np.abs(scaled.astype(int) - ref.transpose(0, 3, 1, 2).astype(int))
    assert diff.mean(axis=(0, 2, 3)).max() < 3  # RGB in channel order; area vs bilinear resampling differ at edges only
    full = np.zeros((len(want), 3, 48, 64), np.uint8)
    V.decode_into(path, want, full)  # stored size, no crop: the right frames
    for got, i in zip(full, want):
        j, err = nearest(got.transpose(1, 2, 0), frames)
        assert j == i and err < 4


def test_decode_into_refuses_what_it_cannot_fill(tmp_path):
    blob = V.encode(smooth_frames(10, 48, 64))
    with pytest.raises(V.VideoError, match=r"frame\(s\) \[10\] not in video"):
        V.decode_into(blob, [2, 10], np.zeros((2, 3, 48, 64), np.uint8))
    with pytest.raises(ValueError, match="does not fit"):
        V.decode_into(blob, [0], np.zeros((1, 3, 48, 64), np.uint8), offset=(1, 0))
    with pytest.raises(ValueError, match="expects uint8"):
        V.decode_into(blob, [0, 1], np.zeros((1, 3, 48, 64), np.uint8))
    with pytest.raises(V.VideoError, match="pixel limit"):
        V.decode_into(blob, [0], np.zeros((1, 3, 48, 64), np.uint8), limits=V.VideoLimits(max_pixels=1000))
    with pytest.raises(V.VideoError, match="in-memory video"):
        V.decode_into(blob[: len(blob) // 3], [0, 9], np.zeros((2, 3, 48, 64), np.uint8))


def test_decode_into_stops_at_the_frame_limit():
    """A raw H.264 stream has no frame count or duration in any header: the limit holds inside the decode loop."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="h264") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for img in smooth_frames(12, 48, 64):
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    blob = buf.getvalue()
    assert V.probe(blob).num_frames == 12  # counted by demuxing; the header itself says nothing
    with pytest.raises(V.VideoError, match="more than 5 frames decoded"):
        V.decode_into(blob, [11], np.zeros((1, 3, 48, 64), np.uint8), limits=V.VideoLimits(max_frames=5))


def test_probe_without_decoding_frames_reads_the_same_header():
    blob = V.encode(smooth_frames(13, 48, 64), fps=12)
    full, quick = V.probe(blob, count_frames=True), V.probe(blob, count_frames=True, pixel_format=False)
    assert (
        (quick.num_frames, quick.width, quick.height, quick.fps, quick.codec)
        == (full.num_frames, full.width, full.height, full.fps, full.codec)
        == (13, 64, 48, 12.0, "h264")
    )
    assert full.pix_fmt == "yuv420p" and quick.pix_fmt is None
