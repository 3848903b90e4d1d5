"""What a job leaves behind: the checkpoint manifest, evaluation results, training metrics."""
