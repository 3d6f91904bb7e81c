"""Feature store: the generated Feast repo and point-in-time training sets.

No re-exports here: ``dg.load_from_defs_folder`` scans this ``__init__`` too, and a definition
imported into it would be registered twice.
"""
