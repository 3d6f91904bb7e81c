"""Embeddings: document chunks, text and image vectors, the vector indexes and near-duplicates.

No re-exports here: ``dg.load_from_defs_folder`` scans this ``__init__`` too, and a definition
imported into it would be registered twice.
"""
