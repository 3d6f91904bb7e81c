"""Thin Dagster modules: assets, checks, jobs and schedules, one module per layer."""
