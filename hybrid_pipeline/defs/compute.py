"""Compute needs read off the asset graph: one rule gives every torch asset its GPU settings.

Assets only declare what they are (``kinds={"pytorch"}``); this module decides what that
means for scheduling: the ``gpu`` pool (one step at a time, see dagster.yaml), the
``compute=gpu`` tag, and a Kubernetes GPU request for the k8s executor. No asset repeats
these by hand, so changing the GPU policy is one edit here.
"""

from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg
from dagster._core.definitions.op_definition import OpDefinition

GPU_KIND = "pytorch"
GPU_POOL = "gpu"
GPU_TAGS = {"compute": "gpu"}
K8S_GPU_CONFIG = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    "pod_spec_config": {"node_selector": {"nvidia.com/gpu.present": "true"}},
}


def needs_gpu(assets_def: dg.AssetsDefinition) -> bool:
    return any(GPU_KIND in spec.kinds for spec in assets_def.specs)


def with_op_placement(
    assets_def: dg.AssetsDefinition,
    *,
    pool: str,
    op_tags: Mapping[str, Any] | None = None,
    spec: Callable[[dg.AssetSpec], dg.AssetSpec] = lambda s: s,
) -> dg.AssetsDefinition:
    """The same asset with its op in ``pool``, ``op_tags`` added, and each spec passed through ``spec``.

    Dagster 1.13 has no public way to set an op's pool after the asset is defined, so the op is
    rebuilt through its internal constructor with every other attribute kept.
    """
    op = assets_def.node_def
    if not isinstance(op, OpDefinition):
        raise TypeError(f"{assets_def.keys}: op placement applies to single-op assets")
    placed = OpDefinition.dagster_internal_init(
        compute_fn=op.compute_fn,
        name=op.name,
        ins=op.ins,
        outs=op.outs,
        description=op.description,
        config_schema=op.config_schema,
        required_resource_keys=op.required_resource_keys,
        tags={**op.tags, **(op_tags or {})},
        version=None,
        retry_policy=op.retry_policy,
        code_version=op.version,
        pool=pool,
    )
    attrs = assets_def.get_attributes_dict()
    attrs["node_def"] = placed
    attrs["specs"] = [spec(s) for s in assets_def.specs]
    return dg.AssetsDefinition.dagster_internal_init(**attrs)


def map_assets(
    defs: dg.Definitions,
    applies: Callable[[dg.AssetsDefinition], bool],
    change: Callable[[dg.AssetsDefinition], dg.AssetsDefinition],
) -> dg.Definitions:
    """``defs`` with ``change`` applied to every assets definition ``applies`` selects."""
    assets = [change(a) if isinstance(a, dg.AssetsDefinition) and applies(a) else a for a in (defs.assets or [])]
    return dg.Definitions.merge(
        dg.Definitions(assets=assets),
        dg.Definitions(
            asset_checks=defs.asset_checks,
            jobs=defs.jobs,
            schedules=defs.schedules,
            sensors=defs.sensors,
            resources=defs.resources,
        ),
    )


def with_gpu_policy(assets_def: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """The same asset, its op in the ``gpu`` pool with GPU op tags and its specs tagged."""
    return with_op_placement(
        assets_def,
        pool=GPU_POOL,
        op_tags={**GPU_TAGS, "dagster-k8s/config": K8S_GPU_CONFIG},
        spec=lambda s: s.merge_attributes(tags=GPU_TAGS),
    )


def apply_compute_policy(defs: dg.Definitions) -> dg.Definitions:
    return map_assets(defs, needs_gpu, with_gpu_policy)
