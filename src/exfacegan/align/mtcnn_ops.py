"""Batched building blocks of MTCNN detection: area resampling of crops, greedy NMS, box arithmetic.

Everything runs on the tensors' device, in float32 where the reference detector (facenet-pytorch
2.6.0, see ../shared/golden/README.md) computes in float32, so decisions at thresholds match it.
"""

from __future__ import annotations

import torch

# Above this many pairwise overlaps, NMS handles the images in several groups.
NMS_PAIRS = 1 << 24


def integral_image(pixels: torch.Tensor) -> torch.Tensor:
    """Summed-area table [N, C, H + 1, W + 1] (int32, int64 for huge images) of integer pixels [N, C, H, W]."""
    height, width = pixels.shape[-2:]
    dtype = torch.int32 if height * width * 255 < 2**31 else torch.int64
    table = pixels.to(dtype).cumsum(-1, dtype=dtype).cumsum(-2, dtype=dtype)
    return torch.nn.functional.pad(table, (1, 0, 1, 0))


def _windows(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-pooling windows [K, size]: cell i covers floor(i L / size) .. ceil((i + 1) L / size) - 1."""
    cells = torch.arange(size, device=length.device)
    first = (cells * length[:, None]) // size
    end = -((-(cells + 1) * length[:, None]) // size)
    return start[:, None] + first, start[:, None] + end


def area_resample(table: torch.Tensor, image: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                  height: torch.Tensor, width: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crops rows top..top+height-1, columns left..left+width-1 of images `image` [K], each resampled to
    `size` as `F.interpolate(mode="area")` does (unweighted, possibly overlapping window means) -> float32
    [K, C, size]. Exact: window sums of integer pixels come from the summed-area table `table`."""
    rows0, rows1 = _windows(top, height, size[0])
    cols0, cols1 = _windows(left, width, size[1])
    n = image[:, None, None, None]
    c = torch.arange(table.shape[1], device=table.device)[None, :, None, None]
    r0, r1, c0, c1 = rows0[:, None, :, None], rows1[:, None, :, None], cols0[:, None, None, :], cols1[:, None, None, :]
    total = table[n, c, r1, c1] - table[n, c, r0, c1] - table[n, c, r1, c0] + table[n, c, r0, c0]
    return total.float() / (r1 - r0).float() / (c1 - c0).float()


def _overlaps(boxes: torch.Tensor, mode: str) -> torch.Tensor:
    """Pairwise overlaps [G, K, K] of boxes [G, K, 4]: "iou" without +1 (torchvision's NMS), "min" = the
    intersection over the smaller area, sizes with +1 (the reference's final numpy NMS)."""
    one = 1.0 if mode == "min" else 0.0
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1 + one) * (y2 - y1 + one) if one else (x2 - x1) * (y2 - y1)
    w = (torch.minimum(x2[..., :, None], x2[..., None, :]) - torch.maximum(x1[..., :, None], x1[..., None, :]) + one).clamp_min(0)
    h = (torch.minimum(y2[..., :, None], y2[..., None, :]) - torch.maximum(y1[..., :, None], y1[..., None, :]) + one).clamp_min(0)
    inter = w * h
    if mode == "min":
        return inter / torch.minimum(area[..., :, None], area[..., None, :])
    return inter / (area[..., :, None] + area[..., None, :] - inter)


def _greedy_keep(suppresses: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Greedy NMS from a strictly lower-triangular [G, K, K] matrix (row i: higher-ranked boxes j that
    would suppress i): box i is kept iff no kept box suppresses it. The Jacobi iteration of that
    triangular recursion reaches its unique solution (the greedy result) in at most K rounds."""
    keep = valid
    for _ in range(suppresses.shape[-1] + 1):
        update = valid & ~(suppresses & keep[:, None, :]).any(-1)
        if torch.equal(update, keep):
            break
        keep = update
    return keep


def nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float, mode: str = "iou") -> torch.Tensor:
    """Greedy NMS within each group (image): indices of the kept boxes, by descending score.

    A box is dropped when its overlap with a kept higher-scoring box is > threshold; equal scores
    keep their input order.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    order = order[groups[order].argsort(stable=True)]  # by group, by score within a group
    group_ids, counts = torch.unique_consecutive(groups[order], return_counts=True)
    width = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=boxes.device) - torch.repeat_interleave(starts, counts)
    row = torch.repeat_interleave(torch.arange(len(counts), device=boxes.device), counts)
    padded = boxes.new_zeros(len(counts), width, 4)
    padded[row, rank] = boxes[order]
    valid = torch.zeros(len(counts), width, dtype=torch.bool, device=boxes.device)
    valid[row, rank] = True
    earlier = torch.ones(width, width, dtype=torch.bool, device=boxes.device).tril(-1)
    step = max(1, NMS_PAIRS // (width * width))
    keep = torch.cat([
        _greedy_keep((_overlaps(padded[g:g + step], mode) > threshold) & earlier, valid[g:g + step])
        for g in range(0, len(counts), step)
    ])
    kept = order[keep[row, rank]]
    return kept[scores[kept].argsort(descending=True, stable=True)]


def regress(boxes: torch.Tensor, offsets: torch.Tensor, plus_one: bool) -> torch.Tensor:
    """Boxes [K, 4] moved by offsets [K, 4] (dx1, dy1, dx2, dy2) in units of the box size, the size taken
    as x2 - x1 (+ 1 with plus_one, as the reference's later stages do)."""
    one = 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + one if one else boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1] + one if one else boxes[:, 3] - boxes[:, 1]
    size = torch.stack([w, h, w, h], 1)
    return boxes + offsets * size


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes [K, 4] made square around their centre, side max(w, h) with w = x2 - x1 (no + 1)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], 1)


def crop_windows(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """The pixels a box reads, without padding: (top, left, rows, cols, non-empty). Coordinates are
    truncated toward zero; the 1-based corners are clamped to x1, y1 >= 1, x2 <= W, y2 <= H and the crop
    is the inclusive range x1 - 1 .. x2 - 1 (so a box sticking out is cut, then stretched)."""
    corners = boxes.trunc().int()
    x1, y1 = corners[:, 0].clamp_min(1), corners[:, 1].clamp_min(1)
    x2, y2 = corners[:, 2].clamp_max(width), corners[:, 3].clamp_max(height)
    rows, cols = y2 - y1 + 1, x2 - x1 + 1
    return (y1 - 1).long(), (x1 - 1).long(), rows.long(), cols.long(), (rows > 0) & (cols > 0)
