"""minunet.nn."""
