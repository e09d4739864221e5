"""minunet.models."""
