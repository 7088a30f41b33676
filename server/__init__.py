"""The Lookalike service: transport (gRPC) | core (embedder, databases) | storage.

Only ``lookalike.server.transport`` imports grpc; the core raises
:class:`lookalike.server.core.errors.LookalikeError` and knows nothing of the wire.
"""
