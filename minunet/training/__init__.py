"""minunet.training."""
