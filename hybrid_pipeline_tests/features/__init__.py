"""Tests of hybrid_pipeline.features."""
