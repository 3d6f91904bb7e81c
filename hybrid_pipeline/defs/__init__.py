"""The Dagster definitions, loaded from this folder by ``dg.load_from_defs_folder``
(``hybrid_pipeline/definitions.py``; ``[tool.dg]`` ``defs_module``).

One package per domain: ``bronze``, ``silver``, ``gold_analytics``, ``gold_features``,
``feature_store``, ``online``, ``streaming``, ``media``, ``models``, ``automation``, ``maintenance``,
``monitoring``; and ``resources.py``, where every resource is configured, once.

How the loader reads this folder, and the rules that follow from it:

* It imports every ``.py`` file below, ``__init__.py`` and underscore names included. A module
  with a module-level ``@dg.definitions`` function (or ``Definitions`` object) contributes only
  what that returns; any other module contributes the assets, checks, jobs, schedules and sensors
  bound at its module level, including ones it imported.
* So a definition is bound at module level in exactly one module. Another module that needs it
  imports the module (``from hybrid_pipeline.defs.automation import jobs``; ``jobs.daily_pipeline``),
  or its key, never the object by name; the ``__init__`` files hold docstrings only.
* Definitions that depend on settings, the daily partitions (``HYBRID_START_DATE``) and the engine's
  pool and kinds (``HYBRID_ENGINE``), are built in a module-level ``@dg.definitions`` function,
  which the loader calls at load time: nothing reads the environment at import.
* Shared helpers that define no Dagster objects (keys, metadata, resource classes, the engine
  resource, the torch decorator, the settings of a load) live in ``hybrid_pipeline.dagster_support``,
  outside this folder, so they are never scanned; pure logic lives in the libraries
  (``hybrid_pipeline.ml``, ``transforms``, ...), which do not import Dagster.
"""
