"""GPU placement, declared where a torch asset is declared: :func:`torch_asset`.

A torch step needs three things besides its code: the ``gpu`` pool (one step at a time, see
dagster.yaml), the ``compute=gpu`` tag, and a Kubernetes GPU request for the k8s executor
(``dagster-k8s/config`` op tag). Dagster sets an op's pool and op tags only when the asset is
defined; there is no documented way to change them afterwards. So the rule lives in one
decorator that every torch asset uses instead of ``dg.asset``: changing the GPU policy is still
one edit here, and no asset repeats these settings by hand.

Only ``dg.asset`` is wrapped: every torch asset is a single asset today. A torch multi-asset
would get a ``torch_multi_asset`` built the same way on ``dg.multi_asset``.
"""

from collections.abc import Callable, Mapping, Set
from typing import Any

import dagster as dg

GPU_KIND = "pytorch"
GPU_POOL = "gpu"
GPU_TAGS = {"compute": "gpu"}
K8S_GPU_CONFIG = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    "pod_spec_config": {"node_selector": {"nvidia.com/gpu.present": "true"}},
}
GPU_OP_TAGS: dict[str, Any] = {**GPU_TAGS, "dagster-k8s/config": K8S_GPU_CONFIG}


def torch_asset(
    *,
    kinds: Set[str] = frozenset(),
    tags: Mapping[str, str] | None = None,
    op_tags: Mapping[str, Any] | None = None,
    **asset_kwargs: Any,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """``dg.asset`` for a step that runs torch: pool ``gpu``, kind ``pytorch``, the GPU tags and k8s request.

    ``kinds``, ``tags`` and ``op_tags`` are added to the GPU ones. A ``pool`` of its own is
    refused: a torch step waits for the GPU, whatever else it touches.
    """
    if "pool" in asset_kwargs:
        raise TypeError("torch_asset places its step in the gpu pool; it takes no pool argument")
    return dg.asset(
        pool=GPU_POOL,
        kinds={GPU_KIND, *kinds},
        tags={**(tags or {}), **GPU_TAGS},
        op_tags={**(op_tags or {}), **GPU_OP_TAGS},
        **asset_kwargs,
    )
