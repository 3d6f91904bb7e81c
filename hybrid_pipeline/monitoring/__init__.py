"""Alert routing and run monitoring, kept free of Dagster so rules are unit-tested."""
