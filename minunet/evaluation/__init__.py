"""minunet.evaluation."""
