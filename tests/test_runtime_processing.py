"""numpy pre/post-processing against torchvision's own transform and mask pasting."""

from __future__ import annotations

import mmap
import pickle

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import (
    GeneralizedRCNNTransform,
)
from torchvision.models.detection.transform import (
    resize_boxes as tv_resize_boxes,
)
from torchvision.models.detection.transform import (
    resize_keypoints as tv_resize_keypoints,
)

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.runtime.interpolate import resize_bilinear_above
from maskrt.runtime.postprocess import (
    paste_masks,
    postprocess,
    resize_boxes,
    resize_keypoints,
    sparse_zeros,
)
from maskrt.runtime.preprocess import Batch, preprocess, resized_size
from maskrt.specs import ModelSpec, demo_spec

SPEC = ModelSpec(arch="maskrcnn_resnet50_fpn", min_size=96, max_size=160)


def _tv_transform(spec: ModelSpec) -> GeneralizedRCNNTransform:
    return GeneralizedRCNNTransform(
        spec.min_size, spec.max_size, list(spec.image_mean), list(spec.image_std)
    ).eval()


def _normalise(images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    mean = np.asarray(spec.image_mean, np.float32)[None, :, None, None]
    std = np.asarray(spec.image_std, np.float32)[None, :, None, None]
    return (images - mean) / std


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 260), st.integers(1, 260)), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_preprocess_matches_torchvision_transform(sizes: list[tuple[int, int]], seed: int) -> None:
    assume(all(min(resized_size(h, w, SPEC.min_size, SPEC.max_size)) >= 1 for h, w in sizes))
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    batch = preprocess(images, SPEC)
    tensors = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
    with torch.no_grad():
        ref, _ = _tv_transform(SPEC)(tensors)
    assert batch.images.shape == tuple(ref.tensors.shape)
    assert batch.images.dtype == np.float32 and batch.image_sizes.dtype == np.int32
    assert [tuple(s) for s in batch.image_sizes.tolist()] == [tuple(s) for s in ref.image_sizes]
    # Normalised, our mean padding must become torchvision's zero padding.
    # torchvision normalises then resizes, we resize (the graph normalises): equal in exact
    # arithmetic; measured 9.5e-7, a few float32 ulps at values up to 2.6 (no ORT in this path)
    np.testing.assert_allclose(_normalise(batch.images, SPEC), ref.tensors.numpy(), atol=1e-4)
    assert batch.original_sizes == tuple(sizes)


def test_preprocess_at_scale_one_is_bit_exact() -> None:
    """An image whose short side is already min_size is not resampled: torchvision's values."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (SPEC.min_size, SPEC.min_size + 37, 3), dtype=np.uint8)
    batch = preprocess([image], SPEC)
    with torch.no_grad():
        ref, _ = _tv_transform(SPEC)([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
    assert batch.images.shape == tuple(ref.tensors.shape)
    assert np.array_equal(_normalise(batch.images, SPEC), ref.tensors.numpy())


def test_preprocess_rejects_bad_images() -> None:
    with pytest.raises(MaskrtError, match="RGB uint8"):
        preprocess([np.zeros((4, 4), np.uint8)], SPEC)
    with pytest.raises(MaskrtError, match="no images"):
        preprocess([], SPEC)
    with pytest.raises(MaskrtError, match="elongated"):
        preprocess([np.zeros((1, 400, 3), np.uint8)], SPEC)


def test_preprocess_fixed_size() -> None:
    batch = preprocess([np.zeros((50, 70, 3), np.uint8)], SPEC, fixed_size=(192, 192))
    assert batch.images.shape == (1, 3, 192, 192)
    with pytest.raises(MaskrtError, match="does not fit"):
        preprocess([np.zeros((50, 70, 3), np.uint8)], SPEC, fixed_size=(64, 64))


def _random_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Boxes of all sizes, some tiny, some partly outside the image."""
    cx = rng.uniform(0, w - 1, n)  # centres inside: torchvision fails on boxes wholly outside
    cy = rng.uniform(0, h - 1, n)
    bw = np.where(rng.random(n) < 0.2, rng.uniform(0, 2, n), rng.uniform(1, 1.5 * w, n))
    bh = np.where(rng.random(n) < 0.2, rng.uniform(0, 2, n), rng.uniform(1, 1.5 * h, n))
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    return boxes.astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_paste_masks_pixel_exact(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(20, 300, 2))
    n = 40
    masks = rng.random((n, 28, 28), dtype=np.float32)
    if seed % 2:  # smooth masks, as a real head predicts, cross 0.5 along curves
        masks = np.sort(masks, axis=2)
    boxes = _random_boxes(rng, n, h, w)
    ours = paste_masks(masks, boxes, (h, w))
    ref = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), (h, w))
    ref = (ref[:, 0] > 0.5).numpy()
    assert ours.shape == ref.shape == (n, h, w)
    assert ours.dtype == bool
    assert np.array_equal(ours, ref), f"{(ours != ref).sum()} pixels differ"


def _blob_masks(rng: np.random.Generator, n: int, m: int = 28) -> np.ndarray:
    """Saturated masks, as a trained head predicts: a round blob near 1 in a field near 0."""
    yy, xx = np.mgrid[:m, :m]
    cy, cx = rng.uniform(m / 4, 3 * m / 4, (2, n, 1, 1))
    radius, gain = rng.uniform(m / 8, m / 2.5, (n, 1, 1)), rng.uniform(1, 6, (n, 1, 1))
    logits = gain * (radius - np.hypot(yy - cy, xx - cx))
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


@pytest.mark.parametrize("seed", range(3))
def test_paste_saturated_masks_into_large_boxes_pixel_exact(seed: int) -> None:
    # Large boxes take the generic kernel, where most pixels are decided without arithmetic.
    rng = np.random.default_rng(seed)
    h, w = 360, 480
    n = 12
    masks = _blob_masks(rng, n)
    boxes = _random_boxes(rng, n, h, w)
    boxes[: n // 2] = [[-20, -10, w + 5, h + 30]]  # image-sized
    ours = paste_masks(masks, boxes, (h, w))
    ref = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), (h, w))
    ref = (ref[:, 0] > 0.5).numpy()
    assert ref[: n // 2].any(axis=(1, 2)).all() and not ref[: n // 2].all(axis=(1, 2)).any()
    assert np.array_equal(ours, ref), f"{(ours != ref).sum()} pixels differ"


@pytest.mark.parametrize("kind", ["noise", "blob", "ties"])
@pytest.mark.parametrize("seed", range(4))
def test_resize_above_threshold_matches_interpolate(kind: str, seed: int) -> None:
    """Against ``F.interpolate(...) > 0.5`` itself, on windows, with masks that take each way
    to the answer: noise (a float32 pass), blobs (most pixels decided by their source rows),
    ties (values a ulp from 0.5: only the exact arithmetic decides)."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        mask = rng.random((30, 30), dtype=np.float32)
    elif kind == "blob":
        mask = _blob_masks(rng, 1, 30)[0]
    else:
        near = np.array([np.nextafter(np.float32(0.5), np.float32(v)) for v in (0, 1)])
        mask = np.where(rng.random((30, 30)) < 0.3, np.float32(0.5), rng.choice(near, (30, 30)))
        mask = mask.astype(np.float32)
    oh, ow = (int(v) for v in rng.integers(40, 700, 2))
    r0, c0 = int(rng.integers(0, oh // 2)), int(rng.integers(0, ow // 2))
    rows, cols = slice(r0, int(rng.integers(r0 + 1, oh + 1))), slice(c0, ow)
    ours = resize_bilinear_above(mask, oh, ow, 0.5, rows, cols)
    full = torch.nn.functional.interpolate(
        torch.from_numpy(mask)[None, None], size=(oh, ow), mode="bilinear", align_corners=False
    )[0, 0]
    ref = (full > 0.5).numpy()[rows, cols]
    assert ref.any() and not ref.all()
    assert np.array_equal(ours, ref), f"{(ours != ref).sum()} pixels differ"


@pytest.mark.skipif(not hasattr(mmap, "MADV_NOHUGEPAGE"), reason="huge pages are Linux's")
def test_paste_masks_small_boxes_on_a_large_image_pixel_exact() -> None:
    # boxes spanning few rows on >= 4 MiB of masks: the sparse (huge-page-free) allocation
    rng = np.random.default_rng(7)
    h, w, n = 600, 800, 12
    masks = _blob_masks(rng, n)
    x0, y0 = rng.uniform(0, w - 120, n), rng.uniform(0, h - 120, n)
    size = rng.uniform(20, 110, (2, n))
    boxes = np.stack([x0, y0, x0 + size[0], y0 + size[1]], 1).astype(np.float32)
    ours = paste_masks(masks, boxes, (h, w))
    owner = ours.base
    while isinstance(owner, (np.ndarray, memoryview)):
        owner = owner.base if isinstance(owner, np.ndarray) else owner.obj
    assert ours.nbytes >= 1 << 22 and isinstance(owner, mmap.mmap)
    ref = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), (h, w))
    assert np.array_equal(ours, (ref[:, 0] > 0.5).numpy())


def test_sparse_zeros_is_a_plain_private_array() -> None:
    a = sparse_zeros((3, 1000, 2000), bool)
    assert a.shape == (3, 1000, 2000) and a.dtype == bool and not a.any()
    a[1, 5, 7] = True  # writable, and shares nothing with the next one
    b = sparse_zeros((3, 1000, 2000), bool)
    assert a.sum() == 1 and not b.any()
    assert np.array_equal(pickle.loads(pickle.dumps(a)), a)
    assert sparse_zeros((2, 3), np.float32).tolist() == [[0.0] * 3] * 2  # small: np.zeros


def test_paste_masks_empty() -> None:
    out = paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (5, 6))
    assert out.shape == (0, 5, 6)


def test_box_and_keypoint_rescale_match_torchvision() -> None:
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 500, (30, 4)).astype(np.float32)
    kps = rng.uniform(0, 500, (30, 17, 3)).astype(np.float32)
    for new, orig in [((800, 1067), (480, 640)), ((799, 1333), (427, 711)), ((128, 128), (33, 33))]:
        ref = tv_resize_boxes(torch.from_numpy(boxes), list(new), list(orig)).numpy()
        assert np.array_equal(resize_boxes(boxes, new, orig), ref)
        ref_kp = tv_resize_keypoints(torch.from_numpy(kps), list(new), list(orig)).numpy()
        assert np.array_equal(resize_keypoints(kps, new, orig), ref_kp)


def test_postprocess_matches_torchvision_postprocess() -> None:
    """Whole-batch postprocess on fake graph outputs vs GeneralizedRCNNTransform.postprocess."""
    rng = np.random.default_rng(3)
    spec = demo_spec()
    k = spec.box_detections_per_img
    originals = ((97, 150), (120, 64))
    resized = np.array([[128, 197], [224, 119]], np.int32)
    num = np.array([7, 0], np.int32)
    outputs = {
        contract.OUTPUT_NUM_DETECTIONS: num,
        contract.OUTPUT_BOXES: rng.uniform(0, 120, (2, k, 4)).astype(np.float32),
        contract.OUTPUT_SCORES: np.sort(rng.random((2, k), dtype=np.float32))[:, ::-1].copy(),
        contract.OUTPUT_LABELS: rng.integers(1, 4, (2, k)).astype(np.int32),
        contract.OUTPUT_MASKS: rng.random((2, k, 28, 28), dtype=np.float32),
    }
    outputs[contract.OUTPUT_BOXES][..., 2:] += outputs[contract.OUTPUT_BOXES][..., :2]
    batch = Batch(np.zeros((2, 3, 224, 224), np.float32), resized, originals)
    dets = postprocess(outputs, batch)
    for i, d in enumerate(dets):
        n = int(num[i])
        pred = {
            "boxes": torch.from_numpy(outputs[contract.OUTPUT_BOXES][i, :n]),
            "masks": torch.from_numpy(outputs[contract.OUTPUT_MASKS][i, :n])[:, None],
        }
        ref = _tv_transform(spec).postprocess([pred], [tuple(resized[i])], [originals[i]])[0]
        assert len(d) == n
        assert np.array_equal(d.boxes, ref["boxes"].numpy())
        assert np.array_equal(d.masks, (ref["masks"][:, 0] > 0.5).numpy())
        assert d.masks.shape == (n, *originals[i])
        assert d.labels.dtype == np.int64
    high = postprocess(outputs, batch, score_threshold=0.9)[0]
    assert np.all(high.scores >= 0.9) and len(high) <= int(num[0])


@pytest.mark.parametrize("seed", range(3))
def test_keypoint_decode_matches_torchvision(seed: int) -> None:
    from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_decode

    from maskrt.runtime.keypoints import heatmaps_to_keypoints

    rng = np.random.default_rng(seed)
    n, k = 12, 17
    # Smooth bumps (what a trained head predicts) plus noise.
    yy, xx = np.mgrid[0:56, 0:56]
    centres = rng.uniform(5, 50, (n, k, 2))
    maps = -((xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2) / 30
    maps = (maps + rng.normal(0, 0.3, maps.shape)).astype(np.float32)
    boxes = _random_boxes(rng, n, 300, 400)
    boxes[:3, 2:] = boxes[:3, :2] + 0.4  # boxes under a pixel: clamped to 1
    ours, our_scores = heatmaps_to_keypoints(maps, boxes)
    ref, ref_scores = tv_decode(torch.from_numpy(maps), torch.from_numpy(boxes))
    np.testing.assert_array_equal(ours, ref.numpy())
    np.testing.assert_array_equal(our_scores, ref_scores.numpy())


def test_postprocess_decodes_keypoint_logits_like_torchvision() -> None:
    from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_decode

    rng = np.random.default_rng(4)
    spec = ModelSpec(arch="keypointrcnn_resnet50_fpn", num_classes=2, box_detections_per_img=5)
    k = spec.box_detections_per_img
    boxes = _random_boxes(rng, k, 200, 300)[None]
    yy, xx = np.mgrid[0:56, 0:56]
    centres = rng.uniform(5, 50, (1, k, 17, 2))
    logits = -((xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2)
    outputs = {
        contract.OUTPUT_NUM_DETECTIONS: np.array([4], np.int32),
        contract.OUTPUT_BOXES: boxes,
        contract.OUTPUT_SCORES: np.linspace(0.9, 0.1, k, dtype=np.float32)[None],
        contract.OUTPUT_LABELS: np.ones((1, k), np.int32),
        contract.OUTPUT_KEYPOINT_LOGITS: (logits / 20).astype(np.float32),
    }
    resized, original = (200, 300), (333, 500)
    batch = Batch(
        np.zeros((1, 3, 224, 320), np.float32), np.array([resized], np.int32), (original,)
    )
    (dets,) = postprocess(outputs, batch)
    kps, _ = tv_decode(
        torch.from_numpy(outputs[contract.OUTPUT_KEYPOINT_LOGITS][0, :4]),
        torch.from_numpy(boxes[0, :4]),
    )
    pred = {"boxes": torch.from_numpy(boxes[0, :4]), "keypoints": kps}
    ref = _tv_transform(spec).postprocess([pred], [resized], [original])[0]
    assert dets.masks is None and dets.keypoints is not None
    np.testing.assert_array_equal(dets.keypoints, ref["keypoints"].numpy())
    np.testing.assert_array_equal(dets.boxes, ref["boxes"].numpy())


def test_threaded_resize_equals_one_pass_and_writes_only_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bands on threads give the bits of one serial pass, and write only the batch slot."""
    from maskrt.runtime import interpolate

    rng = np.random.default_rng(11)
    for (h, w), (out_h, out_w) in [((480, 640), (800, 1067)), ((1080, 1920), (750, 1333))]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        slot = np.full((3, out_h + 3, out_w + 5), np.nan, np.float32)
        threaded = interpolate.resize_image_planes(image, slot[:, :out_h, :out_w]).copy()
        assert np.isnan(slot[:, out_h:]).all() and np.isnan(slot[:, :, out_w:]).all()
        monkeypatch.setattr(interpolate, "_SMALL_WINDOW", 1 << 40)  # one band per channel
        serial = interpolate.resize_image_planes(image, np.empty((3, out_h, out_w), np.float32))
        monkeypatch.undo()
        np.testing.assert_array_equal(threaded, serial)
        assert 0.0 <= threaded.min() and threaded.max() <= 1.0


def test_resize_works_in_a_forked_child() -> None:
    """The resize threads do not survive fork: a child starts its own (no deadlock)."""
    import multiprocessing

    image = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    spec = ModelSpec(arch="maskrcnn_resnet50_fpn")
    want = preprocess([image], spec).images  # the parent's pool exists now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(preprocess, ([image], spec)).get(timeout=60).images
    np.testing.assert_array_equal(got, want)
