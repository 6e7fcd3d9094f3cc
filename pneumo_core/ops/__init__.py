"""Running the product: the model registry, training jobs, the audit log, sign-in and integrity."""
