"""The mirrors of the ledger: MLflow runs and the round report."""
