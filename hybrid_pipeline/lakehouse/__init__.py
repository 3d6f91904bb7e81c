"""Delta tables of the lakehouse: paths, writes, merges, maintenance and time travel."""

from hybrid_pipeline.lakehouse.tables import Lakehouse, TableRef

__all__ = ["Lakehouse", "TableRef"]
