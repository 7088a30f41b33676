"""Embedding, databases and search: everything the service does, without any transport."""
