"""Online features: a landing day's freshest features in the online store, with the skew check.

No re-exports here: ``dg.load_from_defs_folder`` scans this ``__init__`` too, and a definition
imported into it would be registered twice.
"""
