"""Pure, Dagster-free transforms: parse, validate, clean, aggregate."""
