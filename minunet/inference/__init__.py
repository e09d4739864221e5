"""minunet.inference."""
