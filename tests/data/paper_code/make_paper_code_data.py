"""Make tests/data/paper_code/paper_code.npz by running the ExFaceGAN paper code's own functions.

Not run by the tests (it needs the paper code and its dependencies, which this project never imports):

    python -m venv /tmp/papercode/venv && /tmp/papercode/venv/bin/pip install torch torchvision numpy \
        opencv-python-headless facenet-pytorch==2.6.0 scikit-image scikit-learn pandas click requests tqdm
    /tmp/papercode/venv/bin/python tests/data/paper_code/make_paper_code_data.py /path/to/ExFaceGAN \
        /path/to/golden/mtcnn_images.npz tests/data/paper_code

with /path/to/ExFaceGAN a checkout of github.com/fdbtrs/ExFaceGAN. On square crops of the golden photographs around
their largest face (`crops`: twice its size, FFHQ-like framing) and one uniform grey image (no face), acting as the
generator's uint8 renders, it runs:
1. `generate_imgs.main` (the paper code's sampling script; only the generator is replaced by one that returns
   those photographs, and w = z / 2): its `LatsDataset` z stream for `--offset SEED`, its 150 px nearest
   resize and PIL JPEG (quality 75) files, and its z/w latent files;
2. `MTCNN_alignment.align_images` on those files (its MTCNN and batches on the CPU instead of cuda:0): BGR
   detection, `norm_crop` to the shifted ArcFace template, cv2 JPEG (quality 95) faces; then the faces as
   `create_boundary_data.extract_features` reads them (`InferenceDataset`, "totensor"), back to uint8;
3. `create_boundary_data.create_svm_data` (toy embeddings), `train_boundaries.train_all_boundaries`, and
   `create_dataset.load_boundaries` + `load_lats_to_boundary`: which w each boundary moves.
It also records whether cv2 and PIL write the same JPEG bytes at qualities 75 and 95.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from PIL import Image

SEED = 0  # generate_imgs.py --offset: create_dataset.py finds latent %07d of boundary %05d only with offset 0
OTHER_SEED = 7  # a second LatsDataset stream
NO_FACE_AT = 2  # where the grey image goes among the renders


class PhotoGenerator:
    """Stands in for the paper code's StyleGAN3Generator: the next photograph per z, w = z / 2."""

    def __init__(self, photos: list[np.ndarray]) -> None:
        self.photos, self.next = photos, 0

    def synthesize(self, latents, latent_space_type="Z", return_lats=False):
        photo = self.photos[self.next]
        self.next += 1
        image = torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous()
        w = (latents / 2).astype(np.float32)
        return {"image": image, "z": latents, "w": w, "wp": w}

    def postprocess(self, images):
        return images  # the photographs are uint8 already, as StyleGAN3Generator.postprocess returns


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("paper_code", type=Path)
    parser.add_argument("golden_images", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.paper_code))
    import facenet_pytorch

    class CPUMTCNN(facenet_pytorch.MTCNN):
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "device": "cpu"})

    facenet_pytorch.MTCNN = CPUMTCNN  # MTCNN_alignment builds its detector on cuda:0 at import
    to_device = torch.Tensor.to
    torch.Tensor.to = lambda self, *a, **k: to_device(self, *("cpu" if x == "cuda:0" else x for x in a), **k)
    import create_boundary_data
    import create_dataset
    import generate_imgs
    import MTCNN_alignment
    import train_boundaries
    from utils.align_trans import norm_crop
    from utils.augmentation import get_conventional_aug_policy
    from utils.dataloader import InferenceDataset, LatsDataset

    golden = np.load(args.golden_images)
    crops = face_crops([golden[f"img_{i:02d}"] for i in range(len(golden["names"]))], facenet_pytorch.MTCNN)
    photos = [golden[f"img_{i:02d}"][top:bottom, left:right] for i, (top, bottom, left, right) in enumerate(crops)]
    photos.insert(NO_FACE_AT, np.full((300, 300, 3), 128, np.uint8))
    work = Path(tempfile.mkdtemp(prefix="paper_code_"))

    # 1. Sampling script.
    generate_imgs.StyleGAN3Generator = lambda *a, **k: PhotoGenerator(photos)
    generate_imgs.main(SimpleNamespace(save_path=str(work), modelname="stylegan3_ffhq", num_imgs=len(photos),
                                       lat_path="None", offset=SEED, batchsize=1))
    names = sorted(os.listdir(work / "images"))
    z = np.stack([np.load(work / "z_latents" / n.replace(".jpg", ".npy")) for n in names])
    w = np.stack([np.load(work / "w_latents" / n.replace(".jpg", ".npy")) for n in names])
    z_other = LatsDataset(num_imgs=len(photos), lat_path="None", seed=OTHER_SEED).latents
    decoded = [cv2.imread(str(work / "images" / n))[:, :, ::-1] for n in names]  # as MTCNN_alignment reads, RGB
    input_sha256 = [hashlib.sha256(np.ascontiguousarray(d).tobytes()).hexdigest() for d in decoded]

    # 2. Labelling alignment, then the faces as the embedding step reads them. facenet-pytorch 2.6.0 returns its
    # float32 points in object arrays, which today's scikit-image refuses: cast them back before norm_crop.
    MTCNN_alignment.norm_crop = lambda img, landmark, **k: norm_crop(img, np.asarray(landmark, np.float32), **k)
    MTCNN_alignment.align_images(str(work / "images"), str(work / "images_aligned"), batchsize=4)
    dataset = InferenceDataset(str(work / "images_aligned"), get_conventional_aug_policy("totensor"))
    faces = np.stack([(dataset[i][0].permute(1, 2, 0).numpy() * 127.5 + 127.5).round().astype(np.uint8)
                      for i in range(len(dataset))])
    aligned = [os.path.basename(p) for p in dataset.img_paths]
    found = np.array([n in aligned for n in names])

    # 3. Boundaries and the latents create_dataset.py pairs them with.
    embs = np.random.default_rng(0).standard_normal((len(aligned), 8)).astype(np.float32)
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    create_boundary_data.create_svm_data(embs, list(dataset.img_paths), str(work), str(work / "svm"), "w", pool_size=2)
    train_boundaries.train_all_boundaries(str(work / "svm"), str(work / "boundaries"), pool_size=2)
    _, boundary_names = create_dataset.load_boundaries(str(work / "boundaries"))
    paired = create_dataset.load_lats_to_boundary(str(work / "w_latents"), boundary_names)
    assert len(boundary_names) == len(aligned), "a boundary failed to train (its process's error is swallowed)"

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out / "paper_code.npz", seed=SEED, no_face_at=NO_FACE_AT, crops=crops, z=z,
        other_seed=OTHER_SEED, z_other=z_other, w=w, found=found, faces=faces,
        input_sha256=np.array(input_sha256), boundary_names=np.array(boundary_names), paired_latents=paired,
    )
    (args.out / "jpeg_cv2_vs_pil.json").write_text(json.dumps(jpeg_comparison(photos, faces), indent=1) + "\n")


def face_crops(photos: list[np.ndarray], mtcnn_class: type) -> np.ndarray:
    """Per photograph, a square [top, bottom, left, right] twice the side of its largest face around it (FFHQ-like
    framing, so that the face is large enough at 150 px), cut at the image border."""
    mtcnn = mtcnn_class(select_largest=True, min_face_size=20, post_process=False)
    crops = []
    for photo in photos:
        boxes, _ = mtcnn.detect(torch.from_numpy(photo[None].copy()))
        height, width = photo.shape[:2]
        if boxes[0] is None:  # no face at all: the whole photograph
            crops.append([0, height, 0, width])
            continue
        x1, y1, x2, y2 = np.asarray(boxes[0][0], np.float64)
        half, cx, cy = max(x2 - x1, y2 - y1), (x1 + x2) / 2, (y1 + y2) / 2
        crops.append([max(0, round(cy - half)), min(height, round(cy + half)),
                      max(0, round(cx - half)), min(width, round(cx + half))])
    return np.array(crops, dtype=np.int64)


def jpeg_comparison(photos: list[np.ndarray], faces: np.ndarray) -> dict:
    """Are cv2's and PIL's JPEG files of the same RGB image the same bytes (and decodings) at 75 and 95?"""
    small = [cv2.resize(p, (150, 150), interpolation=cv2.INTER_NEAREST) for p in photos]
    result = {"opencv": cv2.__version__, "pillow": Image.__version__}
    for quality in (75, 95):
        same_bytes, max_decoded = 0, 0
        images = small + list(faces)
        for image in images:
            ok, cv2_bytes = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
            same_bytes += int(cv2_bytes.tobytes() == buffer.getvalue())
            by_cv2 = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            by_pil = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
            max_decoded = max(max_decoded, int(np.abs(by_cv2.astype(int) - by_pil).max()))
        result[f"q{quality}"] = {"images": len(images), "same_bytes": same_bytes,
                                 "max_abs_diff_cv2_vs_pil_decoding": max_decoded}
    return result


if __name__ == "__main__":
    main()
