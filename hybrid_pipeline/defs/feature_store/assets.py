"""Feature store: the generated Feast repo, its feature views and point-in-time training sets.

The generated repo follows the latest table versions and is what the ``feast`` CLI, the online
materialization and the checks read. A training set pinned to the versions it read is
retrieved through a store of its own (:func:`hybrid_pipeline.ml.training_set.build_training_set`),
never by rewriting that repo.

Each feature view asset's ``code_version`` is the view's content version
(:func:`hybrid_pipeline.features.catalog.view_versions`: source table, columns, types, TTL and, for
the on-demand view, its transformation code), so changing a definition shows the view (and what
reads it) as changed in Dagster until it is materialized again. The registry keeps each view's
older versions registered (``<view>__v<hash8>``) while a model holding a registry alias was
trained on them, and drops them afterwards.
"""

import hashlib
import json

import dagster as dg

from hybrid_pipeline.dagster_support.keys import (
    FEAST_REGISTRY,
    TRAINING_SET,
    USER_FEATURES,
    USER_FEATURES_VIEW,
    USER_LABELS,
    USER_LANDING_SUMMARY,
    table_of,
)
from hybrid_pipeline.dagster_support.metadata import measured, table_metadata
from hybrid_pipeline.dagster_support.resources import FeatureStoreResource, LakehouseResource, ModelRegistryResource
from hybrid_pipeline.features import catalog
from hybrid_pipeline.ml.training_set import build_training_set, feature_services

_OWNERS = ["team:ml-platform"]
USER_ACTIVITY_VIEW = dg.AssetKey(["features", catalog.ACTIVITY_VIEW])
USER_REQUEST_FEATURES_VIEW = dg.AssetKey(["features", catalog.REQUEST_FEATURES_VIEW])
# Content versions of the definitions in this code (not of any data): where a table lives does not enter them.
VIEW_VERSIONS = catalog.view_versions(catalog.feature_tables("", activity_uri=""))
REGISTRY_VERSION = hashlib.sha256(json.dumps(VIEW_VERSIONS, sort_keys=True).encode()).hexdigest()[:16]


@dg.multi_asset(
    specs=[
        dg.AssetSpec(FEAST_REGISTRY, deps=[USER_FEATURES, USER_LANDING_SUMMARY], group_name="features",
                     kinds={"feast"}, owners=_OWNERS, code_version=REGISTRY_VERSION,
                     description="`feast apply` of the repo generated from the feature tables: entity `user`, the "
                     "feature views `user_features` and `user_activity` (each also under its versioned name "
                     "`<view>__v<hash8>`, plus older versions production models were trained on), the on-demand "
                     "view `user_request_features`, the `purchase_model` feature service."),
        dg.AssetSpec(USER_FEATURES_VIEW, deps=[USER_FEATURES], group_name="features", kinds={"feast", "delta"},
                     owners=_OWNERS, code_version=VIEW_VERSIONS[catalog.USER_FEATURES_VIEW],
                     description="Feast feature view `user_features` over gold/user_features "
                     "(TTL 30 days), served offline from Delta and online from the online store."),
        dg.AssetSpec(USER_ACTIVITY_VIEW, deps=[USER_LANDING_SUMMARY], group_name="features", kinds={"feast"},
                     owners=_OWNERS, code_version=VIEW_VERSIONS[catalog.ACTIVITY_VIEW], skippable=True,
                     description="Feast feature view `user_activity` over gold/user_landing_summary: each user's "
                     "newest event timestamp (`last_event_at`), no TTL."),
        dg.AssetSpec(USER_REQUEST_FEATURES_VIEW, deps=[USER_FEATURES_VIEW, USER_ACTIVITY_VIEW], group_name="features",
                     kinds={"feast"}, owners=_OWNERS, code_version=VIEW_VERSIONS[catalog.REQUEST_FEATURES_VIEW], skippable=True,
                     description="Feast on-demand feature view `user_request_features` (seconds_since_last_event, "
                     "request_hour, amount_vs_avg_order): request fields + stored features, computed by "
                     "hybrid_pipeline.features.on_demand in training and in serving."),
    ]
)
@measured
def feast_registry(lakehouse: LakehouseResource, feature_store: FeatureStoreResource,
                   model_registry: ModelRegistryResource):
    from hybrid_pipeline.features.repo import apply_feature_repo

    lh = lakehouse.lakehouse()
    uri = lh.uri(table_of(USER_FEATURES))
    activity_table = table_of(USER_LANDING_SUMMARY)
    activity_uri = lh.uri(activity_table) if lh.exists(activity_table) else None
    in_use = catalog.versions_in_use(model_registry.tracking_uri)
    report = catalog.write_repo(feature_store.repo_dir, feature_store.online_store, uri, activity_uri,
                                feature_services=feature_services(), storage_options=lh.storage_options or None,
                                versions_in_use=in_use)
    store = apply_feature_repo(feature_store.repo_dir)
    for stale in [v.name for v in store.list_feature_views()
                  if catalog.is_versioned_name(v.name) and v.name not in report["registered"]]:
        store.delete_feature_view(stale)  # no model alias depends on it any more
    views = {v.name: v for v in store.list_feature_views()}
    tables = catalog.feature_tables(uri)
    yield dg.MaterializeResult(asset_key=FEAST_REGISTRY, metadata={
        "repo": dg.MetadataValue.path(feature_store.repo_dir),
        "feature_views": dg.MetadataValue.json(sorted(views)),
        "on_demand_feature_views": dg.MetadataValue.json(sorted(v.name for v in store.list_on_demand_feature_views())),
        "feature_services": dg.MetadataValue.json(sorted(s.name for s in store.list_feature_services())),
        "definitions_hash": catalog.definitions_hash(tables),
        "view_versions": dg.MetadataValue.json(report["versions"]),
        "versioned_views": dg.MetadataValue.json(report["registered"]),
        "dropped_versions": dg.MetadataValue.json(report["dropped"]),
        "versions_in_use": dg.MetadataValue.json(None if in_use is None else sorted(in_use)),
    })
    view = views["user_features"]
    index = view_key_index(store, view)
    yield dg.MaterializeResult(asset_key=USER_FEATURES_VIEW, metadata={
        "features": dg.MetadataValue.json([f.name for f in view.features]),
        "ttl_days": view.ttl.days if view.ttl else -1,
        "source": dg.MetadataValue.path(uri),
        "source_version": lh.version(table_of(USER_FEATURES)) or 0,
        "key_index": dg.MetadataValue.json(index),
        "content_version": report["versions"][catalog.USER_FEATURES_VIEW],
    })
    if catalog.ACTIVITY_VIEW in views:
        yield dg.MaterializeResult(asset_key=USER_ACTIVITY_VIEW, metadata={
            "source": dg.MetadataValue.path(activity_uri or ""),
            "source_version": lh.version(activity_table) or 0,
            "key_index": dg.MetadataValue.json(view_key_index(store, views[catalog.ACTIVITY_VIEW])),
            "content_version": report["versions"][catalog.ACTIVITY_VIEW],
        })
        yield dg.MaterializeResult(asset_key=USER_REQUEST_FEATURES_VIEW, metadata={
            "features": dg.MetadataValue.json(catalog.on_demand.USER_REQUEST_FEATURES.feature_refs()),
            "request_fields": dg.MetadataValue.json(dict(catalog.on_demand.USER_REQUEST_FEATURES.request_fields)),
            "content_version": report["versions"][catalog.REQUEST_FEATURES_VIEW],
        })


def view_key_index(store, view) -> dict:  # noqa: ANN001 - feast.FeatureStore / FeatureView, imported lazily
    """The key index of the view's table at the version the store reads now (built unless
    one exists), so point-in-time retrievals of that version skip the key scan and sort."""
    from hybrid_pipeline.features.delta_offline_store import DeltaOfflineStore

    return DeltaOfflineStore.build_key_index(store.config, view, rebuild=False) or {"built": False}


def training_set_condition() -> dg.AutomationCondition:
    """Rebuild after new labels land (the daily run writes them), once, never while they are written.

    So a retrain that drift triggers later trains on the newest labelled days, not on whatever
    set was last built by hand; the retrain condition waits while this rebuild is in progress.
    """
    AC = dg.AutomationCondition
    labels_updated = AC.any_deps_updated().allow(dg.AssetSelection.assets(USER_LABELS)).since_last_handled()
    return (labels_updated & ~AC.any_deps_in_progress() & ~AC.in_progress()).with_label("new labels since last build")


@dg.asset(key=TRAINING_SET, deps=[USER_FEATURES_VIEW, FEAST_REGISTRY, USER_LABELS], group_name="features",
          automation_condition=training_set_condition(),
          kinds={"feast", "delta", "polars"}, owners=_OWNERS,
          description="Labels joined point-in-time to the `purchase_model` features through Feast's "
          "get_historical_features on the Delta offline store; records the Delta versions it read.")
@measured
def training_set(context: dg.AssetExecutionContext, lakehouse: LakehouseResource, feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    lh = lakehouse.lakehouse()
    features_version = lh.version(table_of(USER_FEATURES))
    labels_version = lh.version(table_of(USER_LABELS))
    if features_version is None or labels_version is None:
        raise dg.Failure("gold/user_features and gold/user_labels must exist before the training set")
    # Retrieved through a store pinned to the versions read now, so it is exactly reproducible
    # from the recorded versions (time travel), whatever lands meanwhile; the repo stays as it is.
    built = build_training_set(lh, labels_version, features_version, key_index_dir=feature_store.key_index_dir(),
                               as_known_at=feature_store.training_as_known_at)
    rows = built.rows
    if not rows.height:
        context.log.warning("no labelled days yet (labels need 7 observed days after them)")
    table = table_of(TRAINING_SET)
    version = lh.replace_where(table, rows, "true", commit_properties=built.provenance())
    context.log.info(f"training set: {rows.height} rows from {built.source_versions}, retrieved {built.retrieval}")
    return dg.MaterializeResult(metadata=table_metadata(
        lh.uri(table), rows.schema, rows.height, version,
        source_versions=dg.MetadataValue.json(built.source_versions),
        content_sha256=built.content_sha256,
        retrieval=built.retrieval,  # as_known_at (filter_by_created_timestamp) or point_in_time
        definitions_hash=catalog.definitions_hash(catalog.feature_tables(lh.uri(table_of(USER_FEATURES)))),
        feature_view_versions=dg.MetadataValue.json(built.view_versions),
        positive_rate=round(float(rows["purchased_next_7d"].mean()), 4) if rows.height else 0.0,
        key_index=dg.MetadataValue.json(built.key_index),
        null_feature_rows=int(rows["total_events"].null_count()) if rows.height else 0,
    ))
