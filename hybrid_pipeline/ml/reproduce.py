"""The purchase model's recipe, and rebuilding a registered version from its run record.

Two halves, one module, so the asset that trains a version and the command that
reproduces it cannot drift apart:

* the **recipe**: how training-set rows become tensors (:func:`encode_features`:
  the string features one-hot / counted, nulls made explicit), which users form the
  train/validation/test holdout (:func:`split_of`: a hash of the user id, so the
  holdout never changes with new data or reruns), and the hyperparameters
  (:class:`~hybrid_pipeline.ml.purchase_config.PurchaseTrainConfig`); :func:`train_recipe`
  trains from rows sorted by ``(user_id, event_timestamp)`` so the minibatch order only
  depends on the content.
* **reproduction**: :func:`reproduce` reads a registered version's run record (the
  Delta versions of ``gold/user_labels`` and ``gold/user_features`` the training set
  was built from, the training set's content hash, seed and hyperparameters),
  rebuilds the training set by Delta time travel with the very function the
  ``features/training_set`` asset ran
  (:func:`~hybrid_pipeline.ml.training_set.build_training_set`: labels@v, features@v
  through a Feast store pinned at v, 30-day TTL), checks the rebuilt rows hash to the
  recorded ``content_sha256``, retrains with the recorded config and compares the
  metrics with the recorded ones.

Tolerance (stated): on CPU with deterministic algorithms, the same thread count and
the same torch build, a retrain is bit-identical, so metrics must agree within
:data:`CPU_TOLERANCE` (1e-6 absolute on AUC, log loss, ECE, accuracy). When the
original run or the reproduction ran on a GPU, kernels differ and only
:data:`CROSS_DEVICE_TOLERANCE` (0.02 absolute) is expected.

Time travel keeps working after the sources move on: new days only add versions,
``optimize`` only tombstones files (they stay readable at the old version), and a
``vacuum`` inside the retention window (168 h by default) deletes only files older
than the retention. A vacuum with a shorter retention can delete files the recorded
versions still need; :func:`reproduce` then fails with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import polars as pl

from hybrid_pipeline.ml.purchase_config import PurchaseTrainConfig
from hybrid_pipeline.ml.training_set import (
    FEATURES_TABLE,
    KEYS,
    LABEL,
    LABELS_TABLE,
    TRAINING_SET_TABLE,
    build_training_set,
    content_sha256,
)
from hybrid_pipeline.transforms.features import FEATURE_COLUMNS, FEATURES_SCHEMA

if TYPE_CHECKING:
    from hybrid_pipeline.lakehouse import Lakehouse
    from hybrid_pipeline.ml.device import DeviceSettings
    from hybrid_pipeline.ml.training import TrainResult

MODEL_NAME: Final = "purchase_model"
EXPERIMENT: Final = "purchase_model"
CPU_TOLERANCE: Final = 1e-6
CROSS_DEVICE_TOLERANCE: Final = 0.02
COMPARED_METRICS: Final = ("test_auc", "test_log_loss", "test_ece", "test_accuracy", "valid_auc", "valid_log_loss")

# --------------------------------------------------------------------------- encoding

EVENT_TYPES: Final = ("view", "click", "add_to_cart", "purchase")
SEGMENTS: Final = ("new", "casual", "regular", "loyal")
NUMERIC_FEATURES: Final = tuple(c for c in FEATURE_COLUMNS if FEATURES_SCHEMA[c].is_numeric())
# heavy-tailed, non-negative: log1p before the model's own standardisation
LOG1P_FEATURES: Final = tuple(c for c in NUMERIC_FEATURES if c.startswith(("total_", "events_", "revenue_", "purchases_",
                                                                            "add_to_carts_", "avg_session")))
NEVER_PURCHASED_DAYS: Final = 60.0  # days_since_last_purchase for users who never bought (> the 30-day window)


def encoding_spec() -> dict[str, Any]:
    """What :func:`encode_features` does, as data: stored with every model and hashed into its run."""
    return {
        "version": 1,
        "numeric": list(NUMERIC_FEATURES),
        "log1p": list(LOG1P_FEATURES),
        "null_numeric": 0.0,
        "never_purchased_days": NEVER_PURCHASED_DAYS,
        "indicators": ["has_features", "never_purchased"],
        "recent_event_types": {"column": "recent_event_types", "separator": ",", "counts_of": list(EVENT_TYPES)},
        "user_segment": {"column": "user_segment", "one_hot": list(SEGMENTS), "other": True},
    }


def encoded_columns(spec: Mapping[str, Any] | None = None) -> list[str]:
    spec = spec or encoding_spec()
    return [
        *spec["numeric"],
        *spec["indicators"],
        *[f"recent_{t}" for t in spec["recent_event_types"]["counts_of"]],
        *[f"segment_{s}" for s in spec["user_segment"]["one_hot"]],
        *(["segment_other"] if spec["user_segment"].get("other") else []),
    ]


def raw_feature_frame(rows: pl.DataFrame | Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Feature rows (frame or dicts as the online store returns them) with every raw feature column, typed."""
    if isinstance(rows, pl.DataFrame):
        df = rows
    else:
        records = [dict(r) if r is not None else {} for r in rows]
        df = pl.DataFrame(
            {c: [r.get(c) for r in records] for c in FEATURE_COLUMNS},
            schema={c: FEATURES_SCHEMA[c] for c in FEATURE_COLUMNS},
            strict=False,
        )
    missing = [c for c in FEATURE_COLUMNS if c not in df.columns]
    if missing:
        df = df.with_columns(pl.lit(None, FEATURES_SCHEMA[c]).alias(c) for c in missing)
    return df.with_columns(pl.col(c).cast(FEATURES_SCHEMA[c], strict=False) for c in FEATURE_COLUMNS)


def encode_frame(rows: pl.DataFrame | Sequence[Mapping[str, Any]], spec: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """The model's input columns (Float32, no nulls), in :func:`encoded_columns` order.

    * numeric features: nulls -> ``null_numeric`` (a label row with no feature row inside
      the TTL has them all null; ``has_features`` says so), ``days_since_last_purchase``
      null (never bought) -> ``never_purchased_days`` plus ``never_purchased`` = 1;
      the counts and amounts go through ``log1p``;
    * ``recent_event_types`` (the last 5 event types, comma-joined) -> a count per type;
    * ``user_segment`` -> one-hot over the known segments plus ``segment_other``.
    """
    spec = spec or encoding_spec()
    df = raw_feature_frame(rows)
    fill = float(spec["null_numeric"])
    numeric: list[pl.Expr] = []
    for c in spec["numeric"]:
        e = pl.col(c).cast(pl.Float64)
        if c == "days_since_last_purchase":
            e = e.fill_null(float(spec["never_purchased_days"]))
        e = e.fill_null(fill).fill_nan(fill)
        if c in spec["log1p"]:
            e = e.clip(lower_bound=0.0).log1p()
        numeric.append(e.alias(c))
    has_features = pl.any_horizontal([pl.col(c).is_not_null() for c in spec["numeric"]])
    seq = spec["recent_event_types"]
    types = pl.col(seq["column"]).fill_null("").str.split(seq["separator"])
    seg = spec["user_segment"]
    segment = pl.col(seg["column"])
    exprs = [
        *numeric,
        has_features.cast(pl.Float64).alias("has_features"),
        (has_features & pl.col("days_since_last_purchase").is_null()).cast(pl.Float64).alias("never_purchased"),
        *[types.list.eval(pl.element() == t).list.sum().fill_null(0).cast(pl.Float64).alias(f"recent_{t}")
          for t in seq["counts_of"]],
        *[(segment == s).fill_null(False).cast(pl.Float64).alias(f"segment_{s}") for s in seg["one_hot"]],
    ]
    if seg.get("other"):
        exprs.append((segment.is_not_null() & ~segment.is_in(list(seg["one_hot"]))).cast(pl.Float64).alias("segment_other"))
    out = df.select(exprs)
    return out.select(pl.col(c).cast(pl.Float32) for c in encoded_columns(spec))


def encode_features(rows: pl.DataFrame | Sequence[Mapping[str, Any]], spec: Mapping[str, Any] | None = None) -> np.ndarray:
    """:func:`encode_frame` as a C-contiguous float32 ``rows x features`` matrix."""
    frame = encode_frame(rows, spec)
    if frame.height == 0:
        return np.empty((0, frame.width), dtype=np.float32)
    return np.ascontiguousarray(frame.to_numpy(), dtype=np.float32)


# --------------------------------------------------------------------------- split

SPLITS: Final = ("train", "valid", "test")


def split_of(user_id: str, salt: str, valid_fraction: float, test_fraction: float) -> str:
    """``train``/``valid``/``test`` from a hash of (salt, user): a user's rows never straddle splits."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


# --------------------------------------------------------------------------- training


@dataclass
class PreparedData:
    """Labelled rows in training order, encoded, with their split."""

    rows: pl.DataFrame  # user_id, event_timestamp, label, split (+ raw features)
    X: np.ndarray
    y: np.ndarray

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        mask = (self.rows["split"] == split).to_numpy()
        return self.X[mask], self.y[mask]

    def counts(self) -> dict[str, int]:
        return {s: int((self.rows["split"] == s).sum()) for s in SPLITS}


def prepare(rows: pl.DataFrame, config: PurchaseTrainConfig = PurchaseTrainConfig()) -> PreparedData:
    """Labelled training-set rows -> encoded matrix, labels and split, sorted by ``(user_id, event_timestamp)``."""
    missing = [c for c in (*KEYS, LABEL) if c not in rows.columns]
    if missing:
        raise ValueError(f"training rows lack {missing}")
    labelled = rows.filter(pl.col(LABEL).is_not_null()).sort(list(KEYS))
    users = labelled["user_id"].unique().to_list()
    splits = {u: split_of(u, config.split_salt, config.valid_fraction, config.test_fraction) for u in users}
    labelled = labelled.with_columns(pl.col("user_id").replace_strict(splits, return_dtype=pl.String).alias("split"))
    X = encode_features(labelled)
    y = labelled[LABEL].cast(pl.Float32).to_numpy().astype(np.float32)
    return PreparedData(labelled, X, y)


def train_recipe(
    rows: pl.DataFrame,
    config: PurchaseTrainConfig = PurchaseTrainConfig(),
    *,
    device: DeviceSettings | None = None,
) -> tuple[TrainResult, PreparedData]:
    """Train the purchase MLP on the train users, early-stop on the valid users, score the test users.

    ``device`` (default: ``config.device``) is where it runs; the run's params are the config
    it ran with (that device, the encoded column names), so they rebuild it.
    """
    import torch

    from hybrid_pipeline.ml.device import pick_device
    from hybrid_pipeline.ml.purchase_model import train_purchase_model
    from hybrid_pipeline.ml.tabular import tensor_batches

    data = prepare(rows, config)
    counts = data.counts()
    for split, n in counts.items():
        if n == 0:
            raise ValueError(f"the {split} split is empty ({counts}); the training set is too small")
    settings = device or pick_device(config.device)
    config = replace(config, device=settings.device, feature_names=tuple(encoded_columns()))
    Xtr, ytr = (torch.from_numpy(a) for a in data.part("train"))
    valid = tuple(torch.from_numpy(a) for a in data.part("valid"))
    test = tuple(torch.from_numpy(a) for a in data.part("test"))
    # one chunk = the whole (small) train split; the trainer shuffles it with the seeded generator
    result = train_purchase_model(tensor_batches(Xtr, ytr, max(1, Xtr.shape[0])), valid, config,  # type: ignore[arg-type]
                                  test=test, device=settings)  # type: ignore[arg-type]
    result.extra["label"] = LABEL
    result.extra["encoding"] = encoding_spec()
    result.extra["raw_feature_columns"] = list(FEATURE_COLUMNS)
    result.extra["split"] = {"salt": config.split_salt, "valid_fraction": config.valid_fraction,
                             "test_fraction": config.test_fraction, "rows": counts}
    return result, data


def feature_definition(definitions_hash: str | None = None) -> dict[str, Any]:
    """What the model's inputs are: the feature view's definitions hash, raw columns, encoding, label."""
    return {"feature_view_definitions_hash": definitions_hash, "raw_columns": list(FEATURE_COLUMNS),
            "encoding": encoding_spec(), "label": LABEL, "keys": list(KEYS)}


def config_from_run_params(params: Mapping[str, Any]) -> PurchaseTrainConfig:
    """The config a run trained with, from its recorded params.

    Runs recorded while the holdout had a config of its own keep it (and a copy of the
    hyperparameters) under ``recipe.<field>`` keys; those win, so such runs rebuild too.
    """
    recorded = {**params, **{k.removeprefix("recipe."): v for k, v in params.items() if k.startswith("recipe.")}}
    return PurchaseTrainConfig.from_params(recorded)


def record_training_run(
    tracking_uri: str,
    result: TrainResult,
    *,
    training_set_version: int,
    source_versions: Mapping[str, int],
    content_sha256: str | None,
    definitions_hash: str | None,
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    model_name: str = MODEL_NAME,
) -> tuple[str, int]:
    """Log a purchase-model run with everything :func:`reproduce` needs, and register a version.

    The run records the input versions (``features/training_set`` and the versions of the
    tables it was built from), the training set's content hash, the feature definition
    (hashed), code version, seed and every hyperparameter (see
    :func:`hybrid_pipeline.ml.registry.log_train_result`). Returns ``(run_id, version)``.
    """
    from hybrid_pipeline.ml.registry import log_train_result, register_model

    input_versions = {TRAINING_SET_TABLE: int(training_set_version), **{k: int(v) for k, v in source_versions.items()}}
    all_tags = {
        "training_set.content_sha256": content_sha256 or "",
        "training_set.definitions_hash": definitions_hash or "",
        "training_set.version": int(training_set_version),
        **dict(tags or {}),
    }
    run_id = log_train_result(tracking_uri, EXPERIMENT, result, input_versions=input_versions,
                              feature_definition=feature_definition(definitions_hash), tags=all_tags,
                              run_name=run_name)
    version = register_model(
        tracking_uri, model_name, run_id,
        tags={"training_set.content_sha256": content_sha256 or "", "training_set.version": int(training_set_version)},
        description=f"trained on {TRAINING_SET_TABLE}@v{training_set_version} "
                    f"({json.dumps(dict(source_versions), sort_keys=True)})",
    )
    return run_id, version


# --------------------------------------------------------------------------- reproduction


def _lakehouse(lakehouse: Lakehouse | str) -> Lakehouse:
    from hybrid_pipeline.lakehouse import Lakehouse

    return lakehouse if isinstance(lakehouse, Lakehouse) else Lakehouse(str(lakehouse))


class ReproduceError(RuntimeError):
    """The run record does not allow a rebuild (missing versions, vacuumed files, unknown model)."""


@dataclass
class ReproduceReport:
    model_name: str
    version: int
    run_id: str
    input_versions: dict[str, int]
    recorded_sha256: str | None
    rebuilt_sha256: str
    rows: int
    recorded_metrics: dict[str, float] = field(default_factory=dict)
    reproduced_metrics: dict[str, float] = field(default_factory=dict)
    tolerance: float = CPU_TOLERANCE
    matches_stored_snapshot: bool | None = None  # rebuilt rows == features/training_set@v (None: not readable)
    retrained: bool = True
    recorded_device: str = ""
    device: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def hash_matches(self) -> bool:
        return self.recorded_sha256 is not None and self.recorded_sha256 == self.rebuilt_sha256

    @property
    def metric_deltas(self) -> dict[str, float]:
        return {k: abs(self.reproduced_metrics[k] - v) for k, v in self.recorded_metrics.items()
                if k in self.reproduced_metrics and not (math.isnan(v) and math.isnan(self.reproduced_metrics[k]))}

    @property
    def metrics_match(self) -> bool:
        if not self.retrained:
            return True
        deltas = self.metric_deltas
        return bool(deltas) and all(d <= self.tolerance for d in deltas.values())

    @property
    def ok(self) -> bool:
        return self.hash_matches and self.metrics_match and self.matches_stored_snapshot is not False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(hash_matches=self.hash_matches, metrics_match=self.metrics_match, ok=self.ok,
                 metric_deltas=self.metric_deltas)
        return d

    def summary(self) -> str:
        lines = [
            f"{self.model_name} v{self.version} (run {self.run_id}): {'REPRODUCED' if self.ok else 'NOT REPRODUCED'}",
            f"  inputs: {json.dumps(self.input_versions, sort_keys=True)}; {self.rows} rows",
            f"  training set sha256: recorded {self.recorded_sha256}, rebuilt {self.rebuilt_sha256} "
            f"({'identical' if self.hash_matches else 'DIFFERENT'})",
        ]
        if self.matches_stored_snapshot is not None:
            lines.append(f"  stored snapshot {TRAINING_SET_TABLE}: {'equal' if self.matches_stored_snapshot else 'DIFFERENT'}")
        if self.retrained:
            lines.append(f"  retrained on {self.device} (recorded {self.recorded_device}), tolerance {self.tolerance:g}:")
            for k, v in sorted(self.recorded_metrics.items()):
                got = self.reproduced_metrics.get(k, float("nan"))
                lines.append(f"    {k:<16} recorded {v:.8f}  reproduced {got:.8f}  |delta| {abs(got - v):.2e}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _run_record(client: Any, run_id: str, tracking_uri: str) -> dict[str, Any]:
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="hp-reproduce-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="run_record.json", dst_path=tmp,
                                                       tracking_uri=tracking_uri)
        except Exception as exc:  # noqa: BLE001 - any artifact-store failure means the same thing here
            raise ReproduceError(f"run {run_id} has no readable run_record.json: {exc}") from exc
        return json.loads(Path(path).read_text(encoding="utf-8"))


def reproduce(
    model_name: str,
    version: int | str,
    lakehouse: Lakehouse | str,
    tracking_uri: str,
    *,
    device: str = "cpu",
    num_threads: int | None = None,
    retrain: bool = True,
    tolerance: float | None = None,
) -> ReproduceReport:
    """Rebuild a registered purchase-model version's training set by time travel and retrain it.

    ``version`` is a number or an alias (``production``). The rebuilt rows must hash to
    the recorded ``content_sha256`` (byte-identical) and, when the training set's own
    recorded version is still readable, equal it. With ``retrain``, the recorded config
    (seed, hyperparameters, split) is trained again on ``device`` with the recorded
    thread count (unless ``num_threads`` is given) and the validation/test metrics are
    compared within ``tolerance`` (default :data:`CPU_TOLERANCE` when both runs are on
    CPU, else :data:`CROSS_DEVICE_TOLERANCE`). Raises :class:`ReproduceError` when the
    record is incomplete or a recorded version can no longer be read.
    """
    from hybrid_pipeline.ml.device import pick_device
    from hybrid_pipeline.ml.registry import mlflow_client, resolve_version

    started = time.perf_counter()
    client = mlflow_client(tracking_uri)
    try:
        mv = resolve_version(client, model_name, version)
    except Exception as exc:  # noqa: BLE001 - MlflowException for unknown names/versions/aliases
        raise ReproduceError(f"no version {version!r} of model {model_name!r} in {tracking_uri}: {exc}") from exc
    run_id = str(mv.run_id)
    run = client.get_run(run_id)
    record = _run_record(client, run_id, tracking_uri)
    tags = dict(run.data.tags)
    inputs = {str(k): int(v) for k, v in (record.get("input_versions") or {}).items()}
    for table in (LABELS_TABLE, FEATURES_TABLE):
        if table not in inputs:
            raise ReproduceError(f"run {run_id} did not record the version of {table} (inputs: {inputs})")
    recorded_sha = tags.get("training_set.content_sha256")
    notes: list[str] = []
    if not recorded_sha:
        notes.append("the run recorded no training-set content hash")

    lh = _lakehouse(lakehouse)
    try:
        # the retrieval the run recorded (as-known-at or latest); runs older than the tag used the default
        retrieval = tags.get("training_set.retrieval")
        as_known_at = None if not retrieval else retrieval == "as_known_at"
        rows = build_training_set(lh, inputs[LABELS_TABLE], inputs[FEATURES_TABLE], as_known_at=as_known_at).rows
    except Exception as exc:  # noqa: BLE001 - delta-rs/polars errors for missing versions or vacuumed files
        raise ReproduceError(
            f"cannot read {LABELS_TABLE}@v{inputs[LABELS_TABLE]} / {FEATURES_TABLE}@v{inputs[FEATURES_TABLE]} "
            f"(vacuumed past the retention?): {exc}"
        ) from exc
    rebuilt_sha = content_sha256(rows)

    stored_equal: bool | None = None
    if TRAINING_SET_TABLE in inputs:
        try:
            stored = lh.read(TRAINING_SET_TABLE, version=inputs[TRAINING_SET_TABLE]).sort(list(KEYS))
            stored_equal = stored.select(rows.columns).equals(rows)
        except Exception as exc:  # noqa: BLE001 - the snapshot may be vacuumed; the sources still rebuild it
            notes.append(f"{TRAINING_SET_TABLE}@v{inputs[TRAINING_SET_TABLE]} not readable ({type(exc).__name__}); "
                         "compared by hash only")

    params = dict(record.get("params") or {})
    recorded_device = tags.get("device", "")
    report = ReproduceReport(
        model_name=model_name, version=int(mv.version), run_id=run_id, input_versions=inputs,
        recorded_sha256=recorded_sha, rebuilt_sha256=rebuilt_sha, rows=rows.height,
        matches_stored_snapshot=stored_equal, retrained=retrain, recorded_device=recorded_device, notes=notes,
    )
    if retrain:
        config = config_from_run_params(params)
        if "seed" in record and record["seed"] is not None and int(record["seed"]) != config.seed:
            raise ReproduceError(f"run {run_id}: recorded seed {record['seed']} differs from config seed {config.seed}")
        if num_threads is not None:
            config = replace(config, num_threads=num_threads)
        result, _ = train_recipe(rows, config, device=pick_device(device))
        recorded = {k: float(v) for k, v in run.data.metrics.items() if k in COMPARED_METRICS}
        report.recorded_metrics = recorded
        report.reproduced_metrics = {k: float(result.metrics[k]) for k in recorded if k in result.metrics}
        report.device = result.device
        both_cpu = recorded_device.startswith("cpu") and result.device.startswith("cpu")
        report.tolerance = tolerance if tolerance is not None else (CPU_TOLERANCE if both_cpu else CROSS_DEVICE_TOLERANCE)
        if not recorded:
            notes.append("the run recorded none of the compared metrics")
    report.seconds = time.perf_counter() - started
    return report


__all__ = [
    "COMPARED_METRICS",
    "CPU_TOLERANCE",
    "CROSS_DEVICE_TOLERANCE",
    "EVENT_TYPES",
    "LABEL",
    "MODEL_NAME",
    "PreparedData",
    "ReproduceError",
    "ReproduceReport",
    "SEGMENTS",
    "config_from_run_params",
    "encode_features",
    "encode_frame",
    "encoded_columns",
    "encoding_spec",
    "feature_definition",
    "prepare",
    "raw_feature_frame",
    "record_training_run",
    "reproduce",
    "split_of",
    "train_recipe",
]
