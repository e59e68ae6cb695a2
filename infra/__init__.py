"""Everything that talks to the outside: config loading, the artifact store, MLflow, Ray, Prefect settings."""
