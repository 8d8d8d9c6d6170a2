"""Raw-image pools: 'image' bytes or 'path' files decoded in the workers give the same
selection as the equivalent features pool (MNIST PNGs), on any shard count and on Ray."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alscale.errors import AlscaleError, PoolError
from alscale.jobspec import validate_job
from alscale.pool import mnist_pool, open_pool, pool_table, write_table
from alscale.runtime.coordinator import run_job
from alscale.scoring.images import BatchDecoder, pixels

ROWS = 400


def half(image):
    """A user transform (imported by path in a test): pixels / 2."""
    return pixels(image) / np.float32(2.0)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    feat = mnist_pool(str(root / "feat.arrow"), rows=ROWS)
    img = mnist_pool(str(root / "img.arrow"), rows=ROWS, images=True)
    # A 'path' pool: PNG files next to the pool, referenced relatively (and one absolutely).
    table = pa.ipc.open_file(str(root / "img.arrow")).read_all()
    (root / "png").mkdir()
    paths = []
    for rid, data in zip(table["row_id"].to_pylist(), table["image"].to_pylist()):
        (root / "png" / f"{rid}.png").write_bytes(data)
        paths.append(f"png/{rid}.png" if rid else str(root / "png" / "0.png"))
    by_path = pa.table({"row_id": table["row_id"], "path": pa.array(paths, pa.string())})
    write_table(by_path, str(root / "paths.parquet"))
    return root, feat, img


def _job(pool, out, **over):
    raw = {"pool": {"path": str(pool)},
           "model": {"factory": "mnist_cnn", "kwargs": {"num_classes": 10}, "mc_samples": 3, "batch_size": 64},
           "strategy": {"name": "bald", "budget": 25},
           "runtime": {"executor": "local", "shards": 2, "chunk_rows": 90}, "seed": 2, "output": str(out)}
    for k, v in over.items():
        section, _, key = k.partition("__")
        raw.setdefault(section, {})[key] = v
    return validate_job(raw)


def _selection(root, name):
    return pq.read_table(root / name / "selection.parquet")


def test_image_and_path_pools_select_exactly_as_the_features_pool(pools):
    root, feat, img = pools
    assert open_pool(str(root / "img.arrow")).media == "image"
    assert open_pool(str(root / "paths.parquet")).media == "path"
    run_job(_job(feat.path, root / "feat"), progress=False)
    expected = _selection(root, "feat")
    for name, pool, shards in (("img1", img.path, 1), ("img3", img.path, 3), ("path2", root / "paths.parquet", 2)):
        run_job(_job(pool, root / name, runtime__shards=shards, model__decode_threads=3), progress=False)
        assert _selection(root, name).equals(expected), name


def test_image_pool_on_ray_equals_local(pools, ray_session):
    root, _, img = pools
    run_job(_job(img.path, root / "local-img", strategy__name="badge"), progress=False)
    run_job(_job(img.path, root / "ray-img", strategy__name="badge", runtime__executor="ray"), progress=False)
    assert _selection(root, "ray-img").equals(_selection(root, "local-img"))


def test_user_transform_by_import_path(pools):
    root, feat, img = pools
    table = pa.ipc.open_file(feat.path).read_all()
    x = np.asarray(table["features"].combine_chunks().flatten()).reshape(ROWS, 784) / np.float32(2.0)
    write_table(pool_table(table["row_id"].to_numpy(), features_N_D=x), str(root / "half.arrow"))
    run_job(_job(root / "half.arrow", root / "half"), progress=False)
    run_job(_job(img.path, root / "img-half", model__transform="tests.runtime.test_images:half"), progress=False)
    assert _selection(root, "img-half").equals(_selection(root, "half"))


def test_decoding_overlaps_batches_and_gives_the_same_rows(pools):
    root, _, img = pools
    table = pa.ipc.open_file(img.path).read_all()
    ids = table["row_id"].to_numpy()
    dec = BatchDecoder(table["image"].combine_chunks(), ids, pixels, column="image", threads=2)
    whole = dec.decode_all()
    got = np.concatenate([x for _, x in dec.batches(5, 333, 64)])
    np.testing.assert_array_equal(got, whole[5:333])
    assert [s for s, _ in dec.batches(0, 130, 64)] == [0, 64, 128]


def _bad_image_pool(root, name, values, type_=pa.binary()):
    path = str(root / name)
    write_table(pa.table({"row_id": pa.array(range(len(values)), pa.int64()), "image": pa.array(values, type_)}),
                path)
    return path


def test_bad_images_are_one_line_errors_naming_the_row(pools, tmp_path):
    root, _, img = pools
    good = pa.ipc.open_file(img.path).read_all()["image"].to_pylist()[:6]
    cases = [
        (_bad_image_pool(tmp_path, "corrupt.arrow", good[:3] + [b"not a png"] + good[4:]),
         "row_id 3 column 'image': cannot decode the image"),
        (_bad_image_pool(tmp_path, "null.arrow", good[:2] + [None] + good[3:]), "row_id 2 column 'image' is null"),
    ]
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(buf, format="PNG")
    cases.append((_bad_image_pool(tmp_path, "ragged.arrow", good[:4] + [buf.getvalue()] + good[5:]),
                  "row_id 4 column 'image': the transform gave 400 values, earlier rows 784"))
    for pool, message in cases:
        with pytest.raises(AlscaleError) as info:
            run_job(_job(pool, tmp_path / "never", runtime__shards=1, runtime__chunk_rows=6), progress=False)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    missing = str(tmp_path / "missing.parquet")
    write_table(pa.table({"row_id": pa.array([0, 1], pa.int64()), "path": ["png/0.png", "nope.png"]}), missing)
    with pytest.raises(AlscaleError, match=r"row_id 0 column 'path': cannot read 'png/0.png'"):
        run_job(_job(missing, tmp_path / "never"), progress=False)
    with pytest.raises(PoolError, match="column 'image' has type string, expected binary"):
        open_pool(_bad_image_pool(tmp_path, "str.arrow", ["a", "b"], pa.string()))
    assert not (tmp_path / "never").exists()
