"""The pieces of the ImageNet-on-a-cluster path that run here: the job files, the image-folder
pool, the ImageNet transform and the ResNet wrapper (torchvision itself lives on the cluster)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from alscale.errors import AlscaleError, PoolError
from alscale.jobspec import load_job
from alscale.pool import mnist_pool, open_pool
from alscale.pool.image_folder import image_folder_pool
from alscale.scoring.zoo import ImageClassifierWithEmbedding, imagenet_transform, resnet50

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["imagenet_entropy", "imagenet_badge"])
def test_imagenet_job_files_validate(name):
    job = load_job(ROOT / "jobs" / f"{name}.yaml")
    assert job.pool.startswith("s3://") and job.output.startswith("s3://")
    assert job.model.transform == "alscale.scoring.zoo:imagenet_transform" and job.model.device == "cuda"
    assert job.runtime.shards == 16 and job.runtime.gpus_per_worker == 1 and job.strategy.budget == 10_000
    text = (ROOT / "jobs" / f"{name}.yaml").read_text()
    assert f"alscale submit jobs/{name}.yaml --address" in text


def test_imagenet_transform_shape_and_normalisation():
    from PIL import Image

    rgb = np.zeros((300, 500, 3), np.uint8)
    rgb[..., 0] = 255
    x = imagenet_transform(Image.fromarray(rgb))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], (1 - 0.485) / 0.229, rtol=1e-5)
    np.testing.assert_allclose(x[2], (0 - 0.406) / 0.225, rtol=1e-5)
    gray = imagenet_transform(Image.fromarray(np.full((64, 64), 128, np.uint8)))  # converted to RGB, upscaled
    assert gray.shape == (3, 224, 224)


class _TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 7, stride=8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_classifier_wrapper_returns_logits_and_the_pooled_embedding():
    model = ImageClassifierWithEmbedding(_TinyBackbone()).eval()
    x = torch.rand(2, 3 * 224 * 224)
    logits, emb = model(x)
    assert logits.shape == (2, 5) and emb.shape == (2, 8)
    torch.testing.assert_close(model.head(emb), logits)
    with pytest.raises(AlscaleError, match="nn.Linear 'fc'"):
        ImageClassifierWithEmbedding(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision installed")
def test_resnet50_without_torchvision_is_a_clear_error():
    with pytest.raises(AlscaleError, match="needs torchvision on every worker"):
        resnet50()


def test_image_folder_pool_from_class_folders(tmp_path):
    img = mnist_pool(str(tmp_path / "img.arrow"), rows=30, images=True)
    import pyarrow as pa

    table = pa.ipc.open_file(img.path).read_all()
    for rid, data, label in zip(*(table[c].to_pylist() for c in ("row_id", "image", "label"))):
        folder = tmp_path / "tree" / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{rid:03d}.png").write_bytes(data)
    (tmp_path / "tree" / "README.txt").write_text("not an image")
    info = image_folder_pool(str(tmp_path / "tree.parquet"), str(tmp_path / "tree"))
    assert info.media == "path" and info.has_label and info.n_rows == 30
    out = pq.read_table(tmp_path / "tree.parquet")
    classes = json.loads(out.schema.metadata[b"alscale.classes"])
    assert classes == sorted({f"digit{v}" for v in table["label"].to_pylist()})
    for path, label in zip(out["path"].to_pylist(), out["label"].to_pylist()):
        assert Path(path).is_absolute() and Path(path).parent.name == classes[label]
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolError, match="no image files"):
        image_folder_pool(str(tmp_path / "x.parquet"), str(tmp_path / "empty"))
    with pytest.raises(PoolError, match="not a folder"):
        image_folder_pool(str(tmp_path / "x.parquet"), str(tmp_path / "tree.parquet"))
    assert open_pool(str(tmp_path / "tree.parquet")).n_rows == 30
