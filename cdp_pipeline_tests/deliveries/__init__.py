"""Tests of cdp_pipeline.deliveries: grouping, the sensor cursor, readiness and discover(), without Dagster."""
