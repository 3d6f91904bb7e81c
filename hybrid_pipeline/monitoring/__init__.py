"""Alert routing and run monitoring (free of Dagster, so rules are unit-tested), and the
Prometheus exporter (``exporter``), which reads the Dagster instance and the lakehouse."""
