"""Feature serving API: FastAPI app over the packed online store, Prometheus metrics."""

from hybrid_pipeline.serving.app import MAX_BATCH, USER_ID_PATTERN, FeatureReader, create_app, valid_user_id
from hybrid_pipeline.serving.server import build_app, pipeline_app, run_server

__all__ = ["MAX_BATCH", "USER_ID_PATTERN", "FeatureReader", "build_app", "create_app", "pipeline_app", "run_server",
           "valid_user_id"]
