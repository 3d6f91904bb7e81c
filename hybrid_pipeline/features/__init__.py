"""Feature store: Feast repo generation and a Delta offline store (delta-rs + polars).

Modules (imported explicitly; importing Feast costs seconds, so nothing is imported here):

* ``pit``: pure polars point-in-time joins (``point_in_time_join``).
* ``key_index``: a table version's keys sorted once (``build_key_index``), searched by the join,
  with its number and boolean features kept in key order.
* ``delta_offline_store``: ``DeltaOfflineStore``/``DeltaOfflineStoreConfig``/``DeltaSource`` for Feast.
* ``repo``: ``write_feature_repo`` generating ``feature_store.yaml`` + definitions.
"""
