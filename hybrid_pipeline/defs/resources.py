"""Resources shared by the asset modules; values come from :mod:`hybrid_pipeline.settings`."""


from pathlib import Path

import dagster as dg
from dagster_deltalake import AzureConfig, GcsConfig, LocalConfig, S3Config
from pydantic import Field

from hybrid_pipeline.lakehouse import Lakehouse


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
    vacuum_retention_hours: int = 168
