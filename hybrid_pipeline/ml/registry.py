"""MLflow (skinny) runs and model registry, SQLite-backed by default.

Why state_dict + JSON instead of ``mlflow.pytorch``: ``mlflow.pytorch.log_model``
pickles the whole module, so loading needs the exact training code (and
unpickling executes code). Here a model is two files under the run's
``model/`` artifact folder: ``state_dict.pt`` (tensors only, loaded with
``torch.load(weights_only=True)``) and ``config.json`` (the architecture spec,
see :mod:`hybrid_pipeline.ml.architectures`, plus whatever serving needs:
feature names, classes, standardisation). A model version in the registry
points at that folder; the ``production`` alias marks the serving version.

Each run records what rebuilds its training set by Delta time travel: the
input table versions (params ``input_version.<table>`` and tag
``input_versions``), a hash of the feature definition, the code version (git
commit when the package lives in a git checkout, else the package version),
the seed and every hyperparameter.

``tracking_uri`` is ``sqlite:///<abs path>/mlflow.db`` by default
(:func:`default_tracking_uri`); artifacts go to ``<db folder>/mlartifacts``
unless an experiment already has a location. mlflow is imported lazily, and
its telemetry and artifact progress bars are switched off
(``MLFLOW_DISABLE_TELEMETRY``, ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``) unless
the environment already sets them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import torch
from torch import nn

from hybrid_pipeline.ml.architectures import build_model, model_spec

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from hybrid_pipeline.ml.training import TrainResult

PRODUCTION_ALIAS: Final = "production"
MODEL_ARTIFACT_PATH: Final = "model"
MODEL_FORMAT: Final = "hybrid_pipeline.torch_state_dict/1"
STATE_DICT_FILE: Final = "state_dict.pt"
CONFIG_FILE: Final = "config.json"
_BATCH: Final = 100  # MLflow log_batch limit for params and tags per call


# --------------------------------------------------------------------------- URIs and clients


def default_tracking_uri(root: str | Path) -> str:
    """``sqlite:///<root>/mlflow.db`` (absolute), creating ``root``."""
    path = Path(root).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def default_artifact_location(tracking_uri: str) -> str:
    """``file://<db folder>/mlartifacts`` for a SQLite URI; for others, leave it to the server."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    if "://" not in tracking_uri:  # a plain folder: file store
        return (Path(tracking_uri) / "mlartifacts").resolve().as_uri()
    return ""


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """An MLflow client for tracking and registry at ``tracking_uri`` (a SQLite file's folder is created).

    Telemetry and artifact progress bars are switched off here, at call time, never at
    import; a value already in the environment wins.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _experiment_id(client: MlflowClient, experiment: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return str(found.experiment_id)
    location = artifact_location or default_artifact_location(client.tracking_uri) or None
    try:
        return str(client.create_experiment(experiment, artifact_location=location))
    except MlflowException:  # created concurrently by another process
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return str(found.experiment_id)


# --------------------------------------------------------------------------- lineage helpers


def feature_definition_hash(definition: Any) -> str:
    """sha256 of the canonical JSON of a feature definition (columns, transforms, filters...)."""
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def detect_code_version() -> str:
    """``git:<commit>`` (``+dirty`` with uncommitted changes) of the package's checkout, else ``hybrid_pipeline==<ver>``."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        if commit:
            return f"git:{commit}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    from hybrid_pipeline import __version__

    return f"hybrid_pipeline=={__version__}"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v), default=str)
        else:
            out[key] = str(v)
    return out


# --------------------------------------------------------------------------- model files


def save_model_dir(
    model: nn.Module,
    path: str | Path,
    *,
    spec: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``state_dict.pt`` (CPU tensors) and ``config.json`` into ``path``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    torch.save(state, out / STATE_DICT_FILE)
    config = {
        "format": MODEL_FORMAT,
        "spec": dict(spec) if spec is not None else model_spec(model),
        "torch_version": torch.__version__,
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "extra": dict(extra or {}),
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str), encoding="utf-8")
    return out


def load_model_dir(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a module from ``config.json`` and load ``state_dict.pt`` (weights only); eval mode."""
    folder = Path(path)
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("format") != MODEL_FORMAT:
        raise ValueError(f"{folder}: unknown model format {config.get('format')!r}")
    model = build_model(config["spec"])
    state = torch.load(folder / STATE_DICT_FILE, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.to(map_location).eval(), config


# --------------------------------------------------------------------------- runs


def log_training_run(
    tracking_uri: str,
    experiment: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, Any] | None = None,
    model: nn.Module | None = None,
    artifacts: Mapping[str, bytes | str | Path] | None = None,
    *,
    input_versions: Mapping[str, int] | None = None,
    feature_definition: Any = None,
    seed: int | None = None,
    code_version: str | None = None,
    metric_history: Mapping[str, Sequence[float]] | None = None,
    model_extra: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    artifact_location: str | None = None,
) -> str:
    """Log one finished training run; returns its run id.

    ``params``: hyperparameters (nested mappings flatten to ``a.b``, lists to
    JSON); ``metrics``: final floats (None/non-numbers skipped);
    ``metric_history``: per-epoch series logged with ``step`` = epoch;
    ``model``: saved as state_dict + JSON under ``model/`` (needs ``spec()``);
    ``artifacts``: name -> bytes / text / a file or folder to copy. The run
    also records ``input_versions`` (table -> Delta version), the
    ``feature_definition`` hash, the code version and ``seed``. On any
    failure the run is marked FAILED and the error re-raised.
    """
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow_client(tracking_uri)
    exp_id = _experiment_id(client, experiment, artifact_location)
    code = code_version or detect_code_version()
    all_params: dict[str, str] = _flatten(params)
    all_tags: dict[str, str] = {k: str(v) for k, v in (tags or {}).items()}
    all_tags["code_version"] = code
    all_params["code_version"] = code
    if code.startswith("git:"):
        all_tags["mlflow.source.git.commit"] = code[4:].removesuffix("+dirty")
    if seed is not None:
        all_params["seed"] = str(seed)
        all_tags["seed"] = str(seed)
    if input_versions:
        for table, version in input_versions.items():
            all_params[f"input_version.{table}"] = str(version)
        all_tags["input_versions"] = json.dumps(dict(input_versions), sort_keys=True)
    if feature_definition is not None:
        fhash = feature_definition_hash(feature_definition)
        all_params["feature_definition_hash"] = fhash
        all_tags["feature_definition_hash"] = fhash

    run = client.create_run(exp_id, run_name=run_name, tags={"code_version": code})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        metric_list = [Metric(k, float(v), now, 0) for k, v in metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for key, series in (metric_history or {}).items():
            metric_list += [Metric(key, float(v), now, step) for step, v in enumerate(series, start=1)]
        param_list = [Param(k, v) for k, v in sorted(all_params.items())]
        tag_list = [RunTag(k, v) for k, v in sorted(all_tags.items())]
        for i in range(0, max(len(param_list), len(tag_list), 1), _BATCH):
            client.log_batch(run_id, params=param_list[i:i + _BATCH], tags=tag_list[i:i + _BATCH])
        for i in range(0, len(metric_list), 1000):
            client.log_batch(run_id, metrics=metric_list[i:i + 1000])
        with tempfile.TemporaryDirectory(prefix="hp-mlflow-") as tmp:
            staging = Path(tmp)
            run_record = {"params": dict(params), "input_versions": dict(input_versions or {}),
                          "feature_definition": feature_definition, "code_version": code, "seed": seed}
            (staging / "run_record.json").write_text(
                json.dumps(run_record, indent=2, sort_keys=True, default=str), encoding="utf-8")
            for name, content in (artifacts or {}).items():
                target = staging / name
                if Path(name).is_absolute() or ".." in Path(name).parts or name in ("", "."):
                    raise ValueError(f"artifact name escapes the run folder: {name!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, bytes):
                    target.write_bytes(content)
                elif isinstance(content, Path):
                    if content.is_dir():
                        shutil.copytree(content, target)
                    else:
                        shutil.copyfile(content, target)
                else:
                    target.write_text(str(content), encoding="utf-8")
            if model is not None:
                extra = {"input_versions": dict(input_versions or {}), "code_version": code,
                         "run_id": run_id, **dict(model_extra or {})}
                save_model_dir(model, staging / MODEL_ARTIFACT_PATH, extra=extra)
            client.log_artifacts(run_id, str(staging))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def log_train_result(
    tracking_uri: str,
    experiment: str,
    result: TrainResult,
    *,
    input_versions: Mapping[str, int] | None = None,
    feature_definition: Any = None,
    tags: Mapping[str, Any] | None = None,
    artifacts: Mapping[str, bytes | str | Path] | None = None,
    with_plots: bool = True,
    run_name: str | None = None,
) -> str:
    """:func:`log_training_run` for a :class:`~hybrid_pipeline.ml.training.TrainResult` (+ loss/ROC plots)."""
    arts: dict[str, bytes | str | Path] = {
        "loss_curve.json": json.dumps(result.loss_curve_dicts(), indent=2),
    }
    if with_plots:
        from hybrid_pipeline.ml.plots import loss_curve_png, roc_curve_png

        arts["loss_curve.png"] = loss_curve_png(result.loss_curve, best_epoch=result.best_epoch)
        for split in ("test", "valid"):
            if split in result.predictions:
                y, p = result.predictions[split]
                if getattr(p, "ndim", 1) == 1 and 0 < y.sum() < y.size:
                    arts["roc_curve.png"] = roc_curve_png(y, p, title=f"ROC ({split})")
                break
    arts.update(artifacts or {})
    all_tags = {"device": result.device, "deterministic": result.deterministic,
                "stopped_early": result.stopped_early, **dict(tags or {})}
    return log_training_run(
        tracking_uri, experiment, result.params, result.metrics, all_tags, result.model, arts,
        input_versions=input_versions, feature_definition=feature_definition,
        seed=result.params.get("seed"), metric_history=result.metric_history(),
        model_extra={k: v for k, v in result.extra.items() if k != "device_settings"},
        run_name=run_name,
    )


# --------------------------------------------------------------------------- registry


def register_model(
    tracking_uri: str,
    name: str,
    run_id: str,
    artifact_path: str = MODEL_ARTIFACT_PATH,
    *,
    description: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> int:
    """Register the run's ``model/`` folder as a new version of ``name`` (created if needed)."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = client.create_model_version(
        name, source, run_id=run_id, description=description,
        tags={k: str(v) for k, v in (tags or {}).items()} or None,
    )
    return int(mv.version)


@dataclass
class LoadedModel:
    name: str
    version: int
    run_id: str | None
    model: nn.Module
    config: dict[str, Any]


def resolve_version(client: MlflowClient, name: str, version: int | str) -> Any:
    """The ``ModelVersion`` of ``name`` that ``version`` names: a number, or an alias such as ``production``."""
    if isinstance(version, int) or str(version).isdigit():
        return client.get_model_version(name, str(version))
    return client.get_model_version_by_alias(name, str(version))


def load_model_version(
    tracking_uri: str,
    name: str,
    version: int | str,
    map_location: str | torch.device = "cpu",
) -> LoadedModel:
    """Download a registered version's files and rebuild the module; ``version`` may be an alias."""
    import mlflow.artifacts

    client = mlflow_client(tracking_uri)
    mv = resolve_version(client, name, version)
    with tempfile.TemporaryDirectory(prefix="hp-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=tmp,
                                                    tracking_uri=tracking_uri)
        model, config = load_model_dir(local, map_location)
    return LoadedModel(name, int(mv.version), mv.run_id, model, config)


def set_production(tracking_uri: str, name: str, version: int, alias: str = PRODUCTION_ALIAS) -> None:
    """Point ``alias`` (default ``production``) at ``version``; the previous holder loses it."""
    mlflow_client(tracking_uri).set_registered_model_alias(name, alias, str(version))


def get_production(tracking_uri: str, name: str, alias: str = PRODUCTION_ALIAS) -> int | None:
    """The version holding ``alias``, or None when no version (or no such model) has it."""
    from mlflow.exceptions import MlflowException

    try:
        return int(mlflow_client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def get_run(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """A run's params, metrics (latest values) and tags as plain dicts."""
    run = mlflow_client(tracking_uri).get_run(run_id)
    return {"run_id": run.info.run_id, "status": run.info.status, "artifact_uri": run.info.artifact_uri,
            "params": dict(run.data.params), "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}


class ModelRegistry:
    """The module functions bound to one tracking URI (what a Dagster resource wraps)."""

    def __init__(self, tracking_uri: str, artifact_location: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location

    @classmethod
    def local(cls, root: str | Path) -> ModelRegistry:
        """SQLite at ``<root>/mlflow.db``, artifacts in ``<root>/mlartifacts``."""
        return cls(default_tracking_uri(root))

    def log_training_run(self, experiment: str, params: Mapping[str, Any], metrics: Mapping[str, float],
                         tags: Mapping[str, Any] | None = None, model: nn.Module | None = None,
                         artifacts: Mapping[str, bytes | str | Path] | None = None, **kwargs: Any) -> str:
        kwargs.setdefault("artifact_location", self.artifact_location)
        return log_training_run(self.tracking_uri, experiment, params, metrics, tags, model, artifacts, **kwargs)

    def log_train_result(self, experiment: str, result: TrainResult, **kwargs: Any) -> str:
        return log_train_result(self.tracking_uri, experiment, result, **kwargs)

    def register_model(self, name: str, run_id: str, artifact_path: str = MODEL_ARTIFACT_PATH,
                       **kwargs: Any) -> int:
        return register_model(self.tracking_uri, name, run_id, artifact_path, **kwargs)

    def load_model_version(self, name: str, version: int | str,
                           map_location: str | torch.device = "cpu") -> LoadedModel:
        return load_model_version(self.tracking_uri, name, version, map_location)

    def set_production(self, name: str, version: int, alias: str = PRODUCTION_ALIAS) -> None:
        set_production(self.tracking_uri, name, version, alias)

    def get_production(self, name: str, alias: str = PRODUCTION_ALIAS) -> int | None:
        return get_production(self.tracking_uri, name, alias)

    def load_production(self, name: str, alias: str = PRODUCTION_ALIAS,
                        map_location: str | torch.device = "cpu") -> LoadedModel | None:
        version = self.get_production(name, alias)
        return None if version is None else self.load_model_version(name, version, map_location)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return get_run(self.tracking_uri, run_id)


__all__ = [
    "MODEL_ARTIFACT_PATH",
    "PRODUCTION_ALIAS",
    "LoadedModel",
    "ModelRegistry",
    "default_artifact_location",
    "default_tracking_uri",
    "detect_code_version",
    "feature_definition_hash",
    "get_production",
    "get_run",
    "load_model_dir",
    "load_model_version",
    "log_train_result",
    "log_training_run",
    "mlflow_client",
    "register_model",
    "resolve_version",
    "save_model_dir",
    "set_production",
]
