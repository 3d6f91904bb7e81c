"""Dagster helpers shared by the ``defs`` modules: asset keys, metadata, resource classes, the engine
resource, the torch decorator and the settings a load runs under.

They live outside ``hybrid_pipeline/defs`` on purpose. ``dg.load_from_defs_folder`` imports every
``.py`` file under ``defs/`` (underscore names included; only ``__pycache__`` and dot-folders are
skipped) and registers the Dagster objects each module holds at module level, so a helper there
would be scanned too, and any definition it imported would be registered twice. Here nothing is
scanned, and nothing here defines an asset, check, job, schedule, sensor or resource instance.
"""
