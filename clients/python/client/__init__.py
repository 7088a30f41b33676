"""Python client for a Lookalike server (``lookalike.client``). Needs grpcio, not torch."""

from lookalike.client.client import BulkItem, ClientError, LookalikeClient

__all__ = ["BulkItem", "ClientError", "LookalikeClient"]
