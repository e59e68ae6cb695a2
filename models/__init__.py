"""Pure PyTorch / diffusers code: no Prefect, MLflow, boto3 or Ray imports below this folder."""
