"""Python client for a Lookalike server (``lookalike.client``). Needs grpcio, not torch."""

from lookalike.client.client import BulkItem, ClientError, LookalikeClient
from lookalike.client.duplicates import duplicate_check

__all__ = ["BulkItem", "ClientError", "LookalikeClient", "duplicate_check"]
