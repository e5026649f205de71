"""Artifact Lineage Gateway: GraphQL/REST over the artifacts table with MLflow lineage."""
