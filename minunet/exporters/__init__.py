"""minunet.exporters."""
