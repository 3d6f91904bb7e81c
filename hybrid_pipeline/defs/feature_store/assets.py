"""Feature store: the generated Feast repo, its feature views and point-in-time training sets.

The generated repo follows the latest table versions and is what the ``feast`` CLI, the online
materialization and the checks read. A training set pinned to the versions it read is
retrieved through a store of its own (:func:`hybrid_pipeline.ml.training_set.build_training_set`),
never by rewriting that repo.
"""

import dagster as dg

from hybrid_pipeline.dagster_support.keys import FEAST_REGISTRY, TRAINING_SET, USER_FEATURES, USER_FEATURES_VIEW, USER_LABELS, table_of
from hybrid_pipeline.dagster_support.metadata import measured, table_metadata
from hybrid_pipeline.dagster_support.resources import FeatureStoreResource, LakehouseResource
from hybrid_pipeline.features import catalog
from hybrid_pipeline.ml.training_set import build_training_set

_OWNERS = ["team:ml-platform"]


@dg.multi_asset(
    specs=[
        dg.AssetSpec(FEAST_REGISTRY, deps=[USER_FEATURES], group_name="features", kinds={"feast"}, owners=_OWNERS,
                     description="`feast apply` of the repo generated from the feature tables: entity `user`, one "
                     "feature view per gold feature table, the `purchase_model` feature service."),
        dg.AssetSpec(USER_FEATURES_VIEW, deps=[USER_FEATURES], group_name="features", kinds={"feast", "delta"},
                     owners=_OWNERS, description="Feast feature view `user_features` over gold/user_features "
                     "(TTL 30 days), served offline from Delta and online from the online store."),
    ]
)
@measured
def feast_registry(lakehouse: LakehouseResource, feature_store: FeatureStoreResource):
    from hybrid_pipeline.features.repo import apply_feature_repo

    lh = lakehouse.lakehouse()
    uri = lh.uri(table_of(USER_FEATURES))
    feature_store.write_repo(uri)
    store = apply_feature_repo(feature_store.repo_dir)
    views = {v.name: v for v in store.list_feature_views()}
    tables = catalog.feature_tables(uri)
    yield dg.MaterializeResult(asset_key=FEAST_REGISTRY, metadata={
        "repo": dg.MetadataValue.path(feature_store.repo_dir),
        "feature_views": dg.MetadataValue.json(sorted(views)),
        "feature_services": dg.MetadataValue.json(sorted(s.name for s in store.list_feature_services())),
        "definitions_hash": catalog.definitions_hash(tables),
    })
    view = views["user_features"]
    index = view_key_index(store, view)
    yield dg.MaterializeResult(asset_key=USER_FEATURES_VIEW, metadata={
        "features": dg.MetadataValue.json([f.name for f in view.features]),
        "ttl_days": view.ttl.days if view.ttl else -1,
        "source": dg.MetadataValue.path(uri),
        "source_version": lh.version(table_of(USER_FEATURES)) or 0,
        "key_index": dg.MetadataValue.json(index),
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
    built = build_training_set(lh, labels_version, features_version, key_index_dir=feature_store.key_index_dir())
    rows = built.rows
    if not rows.height:
        context.log.warning("no labelled days yet (labels need 7 observed days after them)")
    table = table_of(TRAINING_SET)
    version = lh.replace_where(table, rows, "true")
    context.log.info(f"training set: {rows.height} rows from {built.source_versions}")
    return dg.MaterializeResult(metadata=table_metadata(
        lh.uri(table), rows.schema, rows.height, version,
        source_versions=dg.MetadataValue.json(built.source_versions),
        content_sha256=built.content_sha256,
        definitions_hash=catalog.definitions_hash(catalog.feature_tables(lh.uri(table_of(USER_FEATURES)))),
        positive_rate=round(float(rows["purchased_next_7d"].mean()), 4) if rows.height else 0.0,
        key_index=dg.MetadataValue.json(built.key_index),
        null_feature_rows=int(rows["total_events"].null_count()) if rows.height else 0,
    ))
