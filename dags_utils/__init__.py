"""Helpers that Airflow tasks import to store artifacts with lineage (no Airflow import)."""
