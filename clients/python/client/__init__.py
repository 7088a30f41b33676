"""Python client for a Lookalike server (``lookalike.client``). Needs grpcio, not torch."""

from lookalike.client.client import ClientError, LookalikeClient

__all__ = ["ClientError", "LookalikeClient"]
