"""Every resource class of the code location, in one place; ``defs/resources.py`` configures them from
:mod:`hybrid_pipeline.settings`."""


from pathlib import Path
from typing import Optional

import dagster as dg
from dagster_deltalake import AzureConfig, GcsConfig, LocalConfig, S3Config
from pydantic import Field

from hybrid_pipeline.features import catalog
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.ml.training_set import feature_services
from hybrid_pipeline.monitoring.notify import DAYTIME, PAGE, AlertRouter, FileNotifier, LogNotifier, WebhookNotifier


class LakehouseResource(dg.ConfigurableResource):
    """The Delta lakehouse root; storage options use dagster-deltalake's typed configs."""

    root: str
    storage_options: AzureConfig | S3Config | LocalConfig | GcsConfig = Field(
        default_factory=LocalConfig, discriminator="provider"
    )

    def lakehouse(self) -> Lakehouse:
        return Lakehouse(self.root, self.storage_options.str_dict() if not isinstance(self.storage_options, LocalConfig) else {})


class LandingZoneResource(dg.ConfigurableResource):
    """Where files land before bronze takes them."""

    path: str

    @property
    def root(self) -> Path:
        return Path(self.path)


class DataPolicyResource(dg.ConfigurableResource):
    """Privacy and quality thresholds applied by silver and its checks."""

    pii_salt: str
    quarantine_warn_rate: float = 0.05
    quarantine_error_rate: float = 0.25


class FeatureStoreResource(dg.ConfigurableResource):
    """The generated Feast repo (offline store: Delta; online store: SQLite or Redis)."""

    repo_dir: str
    online_store: str = "sqlite"
    training_as_known_at: Optional[bool] = None
    """``HYBRID_TRAINING_AS_KNOWN_AT``: training sets retrieved as known at each label (None: the table's default)."""

    def write_repo(self, user_features_uri: str) -> None:
        """(Re)generate the repo over the latest version of each table."""
        from hybrid_pipeline.features.repo import write_feature_repo

        write_feature_repo(
            self.repo_dir,
            catalog.PROJECT,
            catalog.feature_tables(user_features_uri),
            catalog.online_store_config(self.online_store, self.repo_dir),
            feature_services=feature_services(),
        )

    def key_index_dir(self) -> str:
        """Where stores over this repo's tables keep their key indexes (shared by pinned stores)."""
        from hybrid_pipeline.features.repo import key_index_dir

        return str(key_index_dir(self.repo_dir))

    def online_url(self) -> str:
        """The online store as the direct clients address it (same data Feast reads)."""
        if self.online_store.strip().lower() in ("", "sqlite"):
            return f"sqlite://{catalog.online_sqlite_path(self.repo_dir)}"
        return self.online_store

    def writer(self):  # noqa: ANN201
        from hybrid_pipeline.online import OnlineWriter

        return OnlineWriter.from_url(self.online_url(), catalog.PROJECT)

    def reader(self):  # noqa: ANN201
        from hybrid_pipeline.online import OnlineReader

        return OnlineReader.from_url(self.online_url(), catalog.PROJECT)

    def store(self):  # noqa: ANN201 - feast.FeatureStore, imported lazily (slow import)
        from feast import FeatureStore

        return FeatureStore(repo_path=self.repo_dir)


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go: always the log, plus a JSON-lines file and a webhook when configured."""

    file_path: str | None = None
    webhook_url: str | None = None
    page_webhook_url: str | None = None

    def router(self) -> AlertRouter:
        daytime: list = [LogNotifier()]
        page: list = [LogNotifier()]
        if self.file_path:
            daytime.append(FileNotifier(self.file_path))
            page.append(FileNotifier(self.file_path))
        if self.webhook_url:
            daytime.append(WebhookNotifier(self.webhook_url))
        if self.page_webhook_url or self.webhook_url:
            page.append(WebhookNotifier(self.page_webhook_url or self.webhook_url))
        return AlertRouter({DAYTIME: daytime, PAGE: page})


class TorchDeviceResource(dg.ConfigurableResource):
    """Which torch device training and scoring use: ``auto`` (cuda when present), ``cpu``, ``cuda`` or ``cuda:N``.

    ``cuda`` without a GPU fails the step (no silent CPU fallback). ``amp``/``pin_memory`` may only
    switch those CUDA features off; ``num_threads`` caps CPU intra-op threads (None: torch's default).
    """

    device: str = "auto"
    amp: bool = True
    pin_memory: bool = True
    num_threads: int | None = None

    def settings(self):  # noqa: ANN201 - hybrid_pipeline.ml.device.DeviceSettings (torch imported lazily)
        from hybrid_pipeline.ml.device import pick_device

        return pick_device(self.device, allow_amp=self.amp, allow_pin_memory=self.pin_memory)


class ModelRegistryResource(dg.ConfigurableResource):
    """MLflow tracking + model registry (SQLite by default, see :attr:`~hybrid_pipeline.settings.Settings.model_registry_uri`)."""

    tracking_uri: str

    def registry(self):  # noqa: ANN201 - hybrid_pipeline.ml.registry.ModelRegistry
        from hybrid_pipeline.ml.registry import ModelRegistry

        return ModelRegistry(self.tracking_uri)

    def client(self):  # noqa: ANN201 - mlflow.tracking.MlflowClient
        from hybrid_pipeline.ml.registry import mlflow_client

        return mlflow_client(self.tracking_uri)

    def store_exists(self) -> bool:
        """False for a SQLite store whose file does not exist yet (nothing registered; mlflow not even imported)."""
        if self.tracking_uri.startswith("sqlite:///"):
            return Path(self.tracking_uri[len("sqlite:///"):]).exists()
        return True


class ModelPolicyResource(dg.ConfigurableResource):
    """Thresholds of the model checks (override the resource to tighten or relax them)."""

    auc_floor: float = 0.70
    max_auc_regression: float = 0.01
    psi_warn: float = 0.1
    psi_error: float = 0.25
    digit_accuracy_floor: float = 0.95
