"""Streaming: the Redis event stream into bronze and the online store, as a sensor.

No re-exports here: ``dg.load_from_defs_folder`` scans this ``__init__`` too, and a definition
imported into it would be registered twice.
"""
