"""hybrid_pipeline: one lakehouse for analytics and AI, orchestrated by Dagster."""

__version__ = "0.1.0"
