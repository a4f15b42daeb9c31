"""The training loader: mix, curriculum, frames, crop + K, determinism, rank sharding, bad media.

Also holds ``make_shards``, the tiny shard dataset the train and cache tests share.
"""

from __future__ import annotations

import collections
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from syncam_data import video
from syncam_data.cameras import look_at, relative_angle, spherical_position
from syncam_data.shards.schema import ViewRecord
from syncam_data.shards.writer import ShardWriter
from syncam_model.config import ConfigError, load_config
from syncam_model.curriculum import AngleSchedule, Window, angle_matrix, select_views
from syncam_model.data import BatchBuffers, DataError, as_contract4, build_loader, crop_box, decode_view, updated_K
from tests.conftest import smooth_frames

RING_STEP = 20.0  # degrees between neighbouring cameras of a multi-view group


def ring_c2w(i: int, elevation: float = 0.0) -> list[float]:
    eye = spherical_position((0, 0, 1), 5.0, elevation, RING_STEP * i)
    return [float(v) for v in look_at(eye, (0, 0, 1)).reshape(-1)]


def make_shards(
    root: Path,
    mv_groups: int = 4,
    views: int | list[int] = 7,
    img_groups: int = 2,
    single_groups: int = 3,
    frames: int = 9,
    hw: tuple[int, int] = (40, 56),
    corrupt: str | None = None,
    img_views: int | list[int] = 4,
) -> Path:
    """A tiny shard dataset: multi-view video on a ring (angles = 20 deg x index gap), image sets, single videos.

    ``corrupt`` names a sample id whose media bytes are replaced by garbage.
    """
    h, w = hw
    K = [50.0, 50.0, w / 2, h / 2]
    groups = []
    for g in range(mv_groups):
        recs = []
        for v in range(views if isinstance(views, int) else views[g]):
            clip = smooth_frames(frames, h, w, seed=100 * g + v)
            recs.append(
                ViewRecord(
                    "synth",
                    "multiview_video",
                    f"mv{g}",
                    f"cam{v:02d}",
                    video.encode(clip, fps=8, preset="ultrafast"),
                    "mp4",
                    frames,
                    h,
                    w,
                    fps=8.0,
                    caption=f"scene {g}",
                    frame_indices=list(range(frames)),
                    K=K,
                    c2w=ring_c2w(v),
                )
            )
        groups.append(recs)
    for g in range(img_groups):
        recs = []
        for v in range(img_views if isinstance(img_views, int) else img_views[g]):
            img = smooth_frames(1, h, w, seed=900 + 10 * g + v)[0]
            ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            recs.append(
                ViewRecord(
                    "re10k",
                    "multiview_image",
                    f"im{g}",
                    f"f{v:03d}",
                    png.tobytes(),
                    "png",
                    1,
                    h,
                    w,
                    caption=f"room {g}",
                    K=K,
                    c2w=ring_c2w(v, elevation=5.0),
                )
            )
        groups.append(recs)
    for g in range(single_groups):
        clip = smooth_frames(frames, h, w, seed=700 + g)
        groups.append(
            [
                ViewRecord(
                    "web",
                    "single_video",
                    f"sv{g}",
                    "main",
                    video.encode(clip, fps=8, preset="ultrafast"),
                    "mp4",
                    frames,
                    h,
                    w,
                    fps=8.0,
                    caption=f"clip {g}",
                )
            ]
        )  # web clips: no K, no c2w
    if corrupt:
        for recs in groups:
            for r in recs:
                if r.sample_id == corrupt:
                    r.media = b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50
    with ShardWriter(root, name="tiny", shard_size="1MB", row_group_size="64KB") as wr:
        for recs in groups:
            wr.write_group(recs)
    return root


def tiny_cfg(**over):
    base = {"data.num_workers": 0, "optim.global_batch_size": 1}
    base.update(over)
    return load_config("tiny", base)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"data\.frames"):
        load_config("tiny", {"data.frames": 8})
    with pytest.raises(ConfigError, match=r"curriculum\.schedule\[1\]"):
        load_config(
            "tiny",
            {
                "curriculum.schedule": [
                    {"start_step": 0, "min_angle": 0, "max_angle": 60},
                    {"start_step": 5, "min_angle": 90, "max_angle": 30},
                ]
            },
        )
    with pytest.raises(ConfigError, match=r"data\.mix"):
        load_config("tiny", {"data.mix": {"multiview_video": 1.0, "stereo": 1.0}})
    with pytest.raises(ConfigError, match=r"optim\.nonsense"):
        load_config("tiny", {"optim.nonsense": 1})
    with pytest.raises(ConfigError, match="global_batch_size"):
        load_config("tiny", {"optim.global_batch_size": 3, "data.micro_batch_size": 2}).grad_accumulation(1)


def test_paper_config_defaults():
    cfg = load_config("paper")
    assert (cfg.steps, cfg.data.height, cfg.data.width, cfg.optim.lr, cfg.optim.global_batch_size) == (
        50_000,
        384,
        672,
        1e-4,
        32,
    )
    assert [(s.start_step, s.min_angle, s.max_angle) for s in cfg.curriculum.schedule] == [
        (0, 0, 60),
        (10_000, 30, 90),
        (20_000, 60, 120),
    ]
    assert cfg.data.mix == {"multiview_video": 0.6, "multiview_image": 0.2, "single_video": 0.2}
    assert cfg.diffusion.novel_view_prob == 0.9 and 0 < cfg.diffusion.text_dropout < 1
    assert AngleSchedule(cfg.curriculum).window(15_000) == Window(30, 90)
    assert AngleSchedule(cfg.curriculum).window(10**6) == Window(60, 120)


def test_select_views_respects_window():
    c2w = np.asarray([ring_c2w(i) for i in range(7)])
    ang = angle_matrix(c2w)
    assert ang[0, 3] == pytest.approx(relative_angle(np.asarray(c2w[0]), np.asarray(c2w[3])), abs=1e-6)
    assert ang[0, 3] == pytest.approx(60.0, abs=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = select_views(ang, 3, Window(60, 120), rng)
        assert v is not None and len(set(v)) == 3
        assert all(60 - 1e-6 <= ang[v[0], j] <= 120 + 1e-6 for j in v[1:])
    assert select_views(ang, 3, Window(130, 180), rng) is None  # ring spans 120 deg at most


def test_sample_contract_crop_and_intrinsics(shards):
    cfg = tiny_cfg()
    loader = build_loader(str(shards), cfg)
    batches = [loader.dataset[loader.sampler.plan()] for _ in range(12)]
    seen = set()
    for b in batches:
        kind, n = b["kind"], b["cameras"].shape[1]
        seen.add(kind)
        s = as_contract4(b)[0]
        f = 1 if kind == "multiview_image" else cfg.data.frames
        assert s["video"].shape == (n, f, 3, cfg.data.height, cfg.data.width)
        assert s["video"].min() >= -1 and s["video"].max() <= 1 and s["video"].dtype == torch.float32
        cams = b["cameras"][0].numpy()
        assert np.allclose(cams[0], [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0], atol=1e-6)  # view 0 is the identity
        if kind == "single_video":
            assert n == 1 and torch.isnan(b["K"][0]).all()  # unknown intrinsics stay unknown
        else:
            assert 2 <= n <= 3
        # every view of a sample uses the same frame indices
        assert len(b["frames"][0]) == f
    assert seen == {"multiview_video", "multiview_image", "single_video"}
    # 40x56 -> cover 32x48: scale 0.857 -> 48x34 (rounded), crop x0=0, y0=1
    rw, rh, x0, y0 = crop_box((40, 56), (32, 48))
    assert (rw, rh, x0, y0) == (48, 34, 0, 1)
    K = updated_K([50.0, 50.0, 28.0, 20.0], (40, 56), (32, 48))
    assert K == pytest.approx([50 * 48 / 56, 50 * 34 / 40, 28 * 48 / 56, 20 * 34 / 40 - 1], rel=1e-5)


def test_decoded_pixels_match_the_source_frames(shards):
    cfg = tiny_cfg(**{"data.mix": {"multiview_video": 1.0}})
    loader = build_loader(str(shards), cfg)
    b = loader.dataset[loader.sampler.plan()]
    sid = b["sample_ids"][0][1]
    g, v = int(sid.split("/")[1][2:]), int(sid.split("/")[2][3:])
    src = smooth_frames(9, 40, 56, seed=100 * g + v)
    rw, rh, x0, y0 = crop_box((40, 56), (32, 48))
    want = np.stack(
        [cv2.resize(src[i], (rw, rh), interpolation=cv2.INTER_AREA)[y0 : y0 + 32, x0 : x0 + 48] for i in b["frames"][0]]
    )
    got = b["video"][0, 1].permute(0, 2, 3, 1).numpy().astype(float)
    assert np.abs(got - want).mean() < 12  # H.264 + resampler differences, but the right frames and crop


# (stored h, w) -> (training h, w): identity, downscales with odd crop offsets, an upscale, a portrait clip.
CROPS = [((48, 64), (48, 64)), ((96, 160), (40, 56)), ((102, 70), (34, 50)), ((60, 100), (64, 48))]


def blob_frames(n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey Gaussian spot on black moving across the frame; returns (frames, spot centres (n, 2) in continuous pixels)."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres at +0.5: the convention K uses (docs/cameras.md)
    centres = np.stack([0.42 * w + 0.8 * np.arange(n), 0.47 * h + 0.5 * np.arange(n)], 1)
    sigma = 0.06 * min(h, w)
    out = np.empty((n, h, w, 3), np.uint8)
    for i, (ux, uy) in enumerate(centres):
        out[i] = (230 * np.exp(-((xx - ux) ** 2 + (yy - uy) ** 2) / (2 * sigma**2)))[..., None].astype(np.uint8)
    return out, centres


def centroid(img: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted centre of a (3, H, W) image, continuous pixel coordinates."""
    w = img.astype(np.float64).mean(0)
    w = np.where(w > 12, w, 0)  # ignore coding noise of the black background
    yy, xx = np.mgrid[0 : w.shape[0], 0 : w.shape[1]] + 0.5
    return float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())


@pytest.mark.parametrize("src_hw,dst_hw", CROPS)
def test_fast_decode_gives_the_reference_frames_and_K(src_hw, dst_hw):
    """The decode path (swscale straight to the cover size, crop copied into the batch) against the plain path.

    Reference: every frame decoded at the stored size, resized with OpenCV and
    cropped. Pixels agree within interpolation differences, for frames asked in
    any order with repeats; and a spot at a known position lands where the
    updated K puts it, so pixels and K got the same resize and crop.
    """
    (h, w), (H, W) = src_hw, dst_hw
    clip, centres = blob_frames(12, h, w)
    blob = video.encode(clip, fps=8, preset="ultrafast", crf=12)
    frames = [5, 1, 1, 11, 7]
    fast = decode_view(blob, "mp4", frames, dst_hw, "v", src_hw)
    assert fast.shape == (len(frames), 3, H, W) and fast.dtype == np.uint8
    rw, rh, x0, y0 = crop_box(src_hw, dst_hw)
    full = video.decode(blob, frames)[:, :h, :w]
    interp = cv2.INTER_AREA if rw < w else cv2.INTER_LINEAR
    ref = np.stack([cv2.resize(f, (rw, rh), interpolation=interp)[y0 : y0 + H, x0 : x0 + W] for f in full]).transpose(
        0, 3, 1, 2
    )
    diff = np.abs(fast.astype(int) - ref.astype(int))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8, (diff.mean(), np.percentile(diff, 99))
    assert np.array_equal(fast[1], fast[2])  # a repeated index gives the same frame
    fx, fy, cx, cy = 0.9 * w, 0.8 * w, 0.45 * w, 0.55 * h  # any K: the test compares normalized coordinates
    K2 = updated_K([fx, fy, cx, cy], src_hw, dst_hw)
    for j, i in enumerate(frames):
        ux, uy = centres[i]
        want = (K2[0] * (ux - cx) / fx + K2[2], K2[1] * (uy - cy) / fy + K2[3])
        got = centroid(fast[j])
        assert abs(got[0] - want[0]) < 0.3 and abs(got[1] - want[1]) < 0.3, (i, got, want)


def test_image_views_fill_every_frame_of_their_slot(shards):
    cfg = tiny_cfg(**{"data.mix": {"multiview_image": 1.0}})
    loader = build_loader(str(shards), cfg)
    b = loader.dataset[loader.sampler.plan()]
    v = b["video"]
    assert v.shape[2] == 1 and v.shape[3:] == (3, 32, 48) and v.is_contiguous()
    sid = b["sample_ids"][0][0]
    g, k = int(sid.split("/")[1][2:]), int(sid.split("/")[2][1:])
    src = smooth_frames(1, 40, 56, seed=900 + 10 * g + k)[0]
    rw, rh, x0, y0 = crop_box((40, 56), (32, 48))
    want = cv2.resize(src, (rw, rh), interpolation=cv2.INTER_AREA)[y0 : y0 + 32, x0 : x0 + 48].transpose(2, 0, 1)
    assert np.abs(v[0, 0, 0].numpy().astype(int) - want).mean() < 2  # PNG is lossless: only the resampler differs


def test_batch_memory_is_reused_only_when_no_tensor_holds_it():
    bufs = BatchBuffers(keep=2)
    a = bufs.take((2, 3, 4))
    a.fill_(7)
    view = a[1]
    ptr = a.data_ptr()
    del a
    b = bufs.take((2, 3, 4))
    assert b.data_ptr() != ptr  # ``view`` still uses the first batch's memory
    b.fill_(9)
    assert bool((view == 7).all())
    del view, b
    c = bufs.take((2, 3, 4))
    assert c.data_ptr() == ptr and c.shape == (2, 3, 4)  # now free: the first batch's memory comes back
    assert bufs.take((5,)).data_ptr() not in {ptr, c.data_ptr()}  # another size never shares it


def test_mix_and_curriculum_proportions(shards):
    cfg = tiny_cfg(
        **{
            "data.num_views": [2, 3],
            "curriculum.schedule": [
                {"start_step": 0, "min_angle": 0, "max_angle": 60},
                {"start_step": 300, "min_angle": 60, "max_angle": 120},
            ],
        }
    )
    loader = build_loader(str(shards), cfg)
    kinds = collections.Counter()
    n_counts = collections.Counter()
    for m in range(600):
        p = loader.sampler.plan()
        kinds[p.kind] += 1
        if p.kind == "multiview_video":
            lo, hi = (0, 60) if m < 300 else (60, 120)
            for slot in p.slots:
                g = loader.dataset.by_key[slot.group]
                a = g.angles[slot.views[0], slot.views[1:]]
                assert np.all((a >= lo - 1e-6) & (a <= hi + 1e-6)), (m, a)
                n_counts[len(slot.views)] += 1
    assert kinds["multiview_video"] / 600 == pytest.approx(0.6, abs=0.06)
    assert kinds["multiview_image"] / 600 == pytest.approx(0.2, abs=0.05)
    assert kinds["single_video"] / 600 == pytest.approx(0.2, abs=0.05)
    assert set(n_counts) == {2, 3}
    # a ring of 7 cameras 20 deg apart: every group can satisfy both windows, so nothing is skipped
    assert loader.stats()["skipped_window"]["multiview_video"] == 0


def test_missing_kind_renormalizes_and_infeasible_groups_are_skipped(tmp_path, caplog):
    root = make_shards(tmp_path / "s", mv_groups=3, views=3, img_groups=0, single_groups=1)
    cfg = tiny_cfg(**{"data.num_views": 2, "curriculum.schedule": [{"start_step": 0, "min_angle": 0, "max_angle": 60}]})
    with caplog.at_level("WARNING"):
        loader = build_loader(str(root), cfg)
    assert "renormalized" in caplog.text
    assert loader.index.mix == pytest.approx({"multiview_video": 0.75, "single_video": 0.25})
    # angles 20 and 40 deg on a 3-camera ring: the 25-35 window has no pair at all. With video as the only
    # source that is refused at start, naming the stage...
    only_video = {
        "data.num_views": 2,
        "data.mix": {"multiview_video": 1.0},
        "curriculum.schedule": [{"start_step": 0, "min_angle": 25, "max_angle": 35}],
    }
    with pytest.raises(DataError, match=r"curriculum\.schedule\[0\]"):
        build_loader(str(root), tiny_cfg(**only_video))
    # ...with another source present, the video source is treated like a missing one (issue 15, point 5)
    caplog.clear()
    with caplog.at_level("WARNING"):
        loader = build_loader(
            str(root), tiny_cfg(**{**only_video, "data.mix": {"multiview_video": 0.6, "single_video": 0.2}})
        )
    assert loader.index.mix == {"single_video": 1.0}
    assert "curriculum.schedule[0]" in caplog.text and "0 of 3 multiview_video groups" in caplog.text


def test_a_source_that_cannot_supply_a_sample_is_left_out_of_the_mix(tmp_path, caplog):
    # image sets of 2 views cannot give data.num_views=3: warn once with the counts, renormalize, go on
    root = make_shards(tmp_path / "s", mv_groups=2, views=7, img_groups=3, img_views=2, single_groups=1)
    cfg = tiny_cfg(**{"data.num_views": 3})
    with caplog.at_level("WARNING"):
        loader = build_loader(str(root), cfg)
    warnings = [r.getMessage() for r in caplog.records if "multiview_image" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "0 of 3 multiview_image groups can give 3 views" in warnings[0] and "2 views" in warnings[0]
    assert loader.index.mix == pytest.approx({"multiview_video": 0.75, "single_video": 0.25})
    kinds = {loader.sampler.plan().kind for _ in range(60)}
    assert kinds == {"multiview_video", "single_video"}
    batch = next(iter(build_loader(str(root), cfg, total_micro=1).dataloader()))
    assert batch["video"].shape[1] == (1 if batch["kind"] == "single_video" else 3)
    # a range the image sets can serve in part is still refused for them: every drawn n must be possible
    assert set(build_loader(str(root), tiny_cfg(**{"data.num_views": [2, 3]})).index.mix) == {
        "multiview_video",
        "single_video",
    }
    # ...and when no source can supply a sample, training stops with every reason
    with pytest.raises(DataError, match=r"multiview_image.*0 of 3"):
        build_loader(str(root), tiny_cfg(**{"data.num_views": 3, "data.mix": {"multiview_image": 1.0}}))


def test_feasibility_is_decided_the_same_on_every_rank(tmp_path):
    # 2 image sets that can give 4 views and 2 that cannot. Each rank owns a seeded half of them; every rank
    # must train the same kinds, so a source is usable only if every rank's share can supply it.
    root = make_shards(tmp_path / "s", mv_groups=2, views=7, img_groups=4, img_views=[4, 4, 2, 2], single_groups=2)
    kept = []
    for seed in (0, 2):  # seed 0 gives one rank both 4-view sets, seed 2 gives each rank one
        cfg = tiny_cfg(**{"data.num_views": 4, "seed": seed})
        mixes = [build_loader(str(root), cfg, rank=r, world_size=2).index.mix for r in range(2)]
        assert mixes[0] == mixes[1]
        kept.append("multiview_image" in mixes[0])
    assert kept == [False, True]


def test_window_skips_are_counted(tmp_path):
    # group mv0 spans 0..120 deg; mv1 has two cameras 20 deg apart: the 60-120 window must skip it
    root = make_shards(tmp_path / "s", mv_groups=2, views=[7, 2], img_groups=0, single_groups=0)
    cfg = tiny_cfg(
        **{
            "data.mix": {"multiview_video": 1.0},
            "data.num_views": 2,
            "curriculum.schedule": [{"start_step": 0, "min_angle": 60, "max_angle": 120}],
        }
    )
    loader = build_loader(str(root), cfg)
    for _ in range(30):
        assert loader.sampler.plan().slots[0].group == "synth/mv0"
    st = loader.stats()
    assert st["skipped_window"]["multiview_video"] >= 10
    assert st["draws"]["multiview_video"] == 30 + st["skipped_window"]["multiview_video"]


def test_deterministic_and_resumable_plans(shards):
    cfg = tiny_cfg(**{"data.num_views": [2, 3]})
    a = build_loader(str(shards), cfg)
    plans_a = [a.sampler.plan() for _ in range(40)]
    b = build_loader(str(shards), cfg)
    for _ in range(17):
        b.sampler.plan()
    state = b.sampler.state_dict()
    c = build_loader(str(shards), cfg)
    c.sampler.load_state_dict(state)
    rest = [c.sampler.plan() for _ in range(23)]
    key = lambda p: (p.kind, [(s.group, s.views, s.frames) for s in p.slots])  # noqa: E731
    assert [key(p) for p in plans_a[17:]] == [key(p) for p in rest]
    other = build_loader(str(shards), tiny_cfg(**{"data.num_views": [2, 3], "seed": 1}))
    assert [key(p) for p in plans_a] != [key(other.sampler.plan()) for _ in range(40)]


def test_ranks_and_workers_disjoint(shards):
    cfg = tiny_cfg(**{"data.num_workers": 2})
    seen: list[set[str]] = []
    for rank in range(2):
        loader = build_loader(str(shards), cfg, rank=rank, world_size=2, total_micro=20)
        ids = [sid for b in loader.dataloader() for views in b["sample_ids"] for sid in views]
        assert len(ids) >= 20
        seen.append({s.rsplit("/", 1)[0] for s in ids})
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    # the kind sequence is the same on both ranks (equal-shaped steps)
    k0 = [build_loader(str(shards), cfg, rank=0, world_size=2).sampler.plan().kind for _ in range(1)]
    k1 = [build_loader(str(shards), cfg, rank=1, world_size=2).sampler.plan().kind for _ in range(1)]
    assert k0 == k1


def test_workers_give_the_same_batches_as_the_main_process(shards):
    cfg0 = tiny_cfg()
    cfg2 = tiny_cfg(**{"data.num_workers": 2})
    a = [b for b in build_loader(str(shards), cfg0, total_micro=6).dataloader()]
    b = [b for b in build_loader(str(shards), cfg2, total_micro=6).dataloader()]
    assert [x["micro_id"] for x in b] == list(range(6))
    for x, y in zip(a, b):
        assert x["sample_ids"] == y["sample_ids"]
        assert torch.equal(x["video"], y["video"])


def test_corrupt_view_is_logged_and_replaced(tmp_path, caplog):
    root = make_shards(tmp_path / "s", mv_groups=0, img_groups=0, single_groups=3, corrupt="web/sv1/main")
    cfg = tiny_cfg(**{"data.mix": {"single_video": 1.0}})
    loader = build_loader(str(root), cfg)
    replaced = 0
    with caplog.at_level("WARNING"):
        for _ in range(9):
            b = loader.dataset[loader.sampler.plan()]
            assert b["sample_ids"][0][0] != "web/sv1/main"
            replaced += b["replaced"]
    assert replaced >= 1
    assert "web/sv1" in caplog.text


def test_no_usable_data_is_a_clear_error(tmp_path):
    root = make_shards(tmp_path / "s", mv_groups=0, img_groups=0, single_groups=1, frames=5)
    with pytest.raises(DataError, match="no usable groups"):
        build_loader(str(root), tiny_cfg())  # tiny config wants 9 frames; the only clip has 5


def test_angle_helper_math():
    assert math.isclose(angle_matrix(np.asarray([ring_c2w(0), ring_c2w(2)]))[0, 1], 40.0, abs_tol=1e-6)
