"""Gold analytics: daily metrics and the star schema of a landing day.

No re-exports here: ``dg.load_from_defs_folder`` scans this ``__init__`` too, and a definition
imported into it would be registered twice.
"""
