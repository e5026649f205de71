"""Example Airflow DAG: market analysis published through dags_utils and chartkit."""
