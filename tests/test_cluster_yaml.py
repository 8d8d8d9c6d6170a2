"""Every Ray cluster-launcher YAML in the repository passes Ray's own schema and config checks (offline)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _cluster_yamls() -> list[Path]:
    found = []
    for path in sorted(ROOT.glob("**/*.yaml")):
        if any(part.startswith(".") or part in ("out", "data", "benchmarks") for part in path.relative_to(ROOT).parts):
            continue
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and "available_node_types" in doc and "provider" in doc:
            found.append(path)
    return found


def test_the_cluster_yamls_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _cluster_yamls()}
    assert {"cluster.yaml", "docs/cluster-gcp.yaml"} <= names


@pytest.mark.parametrize("path", _cluster_yamls(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cluster_yaml_passes_rays_schema_and_validation(path: Path) -> None:
    import jsonschema
    import ray.autoscaler

    config = yaml.safe_load(path.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    # What alscale relies on: a head that takes no shard actors, GPU workers that autoscale
    # from zero, a pinned rayproject/ray image, token auth on every node.
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers)
    image = config["docker"]["image"]
    assert image.startswith("rayproject/ray:") and "latest" not in image and "ray-ml" not in image
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if c.strip().startswith(("RAY_", "ray start")))
    assert any("alscale[gpu]" in c for c in config["setup_commands"])
