"""mnist_pool: idx parsing and the MNIST pool (real files from the shared data folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alscale.errors import PoolError
from alscale.pool import mnist_pool, open_pool, read_shard
from alscale.types import ShardSpec

MNIST = Path("/work/shared/data/mnist")
needs_mnist = pytest.mark.skipif(not (MNIST / "train-images.idx3-ubyte").is_file(),
                                 reason="MNIST idx files not in /work/shared/data/mnist")


def _write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(folder: Path, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    _write_idx(folder / "t10k-images.idx3-ubyte", 0x803, images)
    _write_idx(folder / "t10k-labels.idx1-ubyte", 0x801, labels)
    return images, labels


@needs_mnist
def test_train_split(tmp_path):
    info = mnist_pool(str(tmp_path / "mnist.arrow"), source=str(MNIST))
    assert (info.n_rows, info.feature_dim, info.has_label, info.format) == (60_000, 784, True,
                                                                             "ipc")
    got = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), ["features", "label"])
    np.testing.assert_array_equal(got.row_ids_N, np.arange(60_000))
    assert got.features_N_D.dtype == np.float32
    assert got.features_N_D.min() == 0.0 and got.features_N_D.max() == 1.0
    assert got.labels_N.dtype == np.int64 and set(np.unique(got.labels_N)) == set(range(10))
    raw = np.frombuffer((MNIST / "train-images.idx3-ubyte").read_bytes()[16:16 + 784], np.uint8)
    np.testing.assert_array_equal(got.features_N_D[0], raw.astype(np.float32) / 255)
    assert got.labels_N[0] == (MNIST / "train-labels.idx1-ubyte").read_bytes()[8]


@needs_mnist
def test_test_split_from_default_location(tmp_path, monkeypatch):
    monkeypatch.delenv("ALSCALE_MNIST_DIR", raising=False)
    info = mnist_pool(str(tmp_path / "mnist-test.parquet"), split="test")
    assert (info.n_rows, info.feature_dim, info.format) == (10_000, 784, "parquet")


def test_env_dir_and_exact_values(tmp_path, monkeypatch):
    images, labels = _fake_mnist(tmp_path)
    monkeypatch.setenv("ALSCALE_MNIST_DIR", str(tmp_path))
    info = mnist_pool(str(tmp_path / "out" / "m.arrow"), split="test")
    got = read_shard(ShardSpec(info.path, 0, 0, 6), ["features", "label"])
    np.testing.assert_array_equal(got.features_N_D, images.reshape(6, -1) / np.float32(255))
    np.testing.assert_array_equal(got.labels_N, labels)
    assert open_pool(info.path).n_rows == 6


def test_bad_magic_names_the_file(tmp_path):
    images, labels = _fake_mnist(tmp_path)
    _write_idx(tmp_path / "t10k-labels.idx1-ubyte", 0x803, labels)
    with pytest.raises(PoolError, match=r"t10k-labels\.idx1-ubyte: bad idx magic number "
                                        r"0x00000803 \(expected 0x00000801\)"):
        mnist_pool(str(tmp_path / "m.arrow"), source=str(tmp_path), split="test")


def test_truncated_file_names_the_file(tmp_path):
    _fake_mnist(tmp_path)
    path = tmp_path / "t10k-images.idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(PoolError, match=r"t10k-images\.idx3-ubyte: holds \d+ bytes of data"):
        mnist_pool(str(tmp_path / "m.arrow"), source=str(tmp_path), split="test")


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(PoolError, match=r"train-images\.idx3-ubyte is missing"):
        mnist_pool(str(tmp_path / "m.arrow"), source=str(tmp_path))
    with pytest.raises(PoolError, match="no such directory"):
        mnist_pool(str(tmp_path / "m.arrow"), source=str(tmp_path / "nope"))
    with pytest.raises(PoolError, match="unknown split 'valid'"):
        mnist_pool(str(tmp_path / "m.arrow"), split="valid")


def test_gzipped_idx_files(tmp_path):
    import gzip

    images, labels = _fake_mnist(tmp_path)
    for name in ("t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte"):
        src = tmp_path / name
        with gzip.open(tmp_path / f"{name}.gz", "wb") as out:
            out.write(src.read_bytes())
        src.unlink()
    info = mnist_pool(str(tmp_path / "m.arrow"), source=str(tmp_path), split="test")
    assert info.n_rows == 6


def test_gray_png_round_trips_through_pillow():
    import io

    import numpy as np
    from PIL import Image

    from alscale.pool.mnist import gray_png

    a = np.random.default_rng(0).integers(0, 256, (28, 17)).astype(np.uint8)
    decoded = Image.open(io.BytesIO(gray_png(a)))
    assert decoded.mode == "L" and decoded.size == (17, 28)
    np.testing.assert_array_equal(np.asarray(decoded), a)
