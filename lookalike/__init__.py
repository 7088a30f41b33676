"""Lookalike: self-hosted similar-image matching and image retrieval.

Subpackages: ``lookalike.server`` (the service), ``lookalike.trainer`` (self-supervised
training), ``lookalike.client`` (Python client and CLI commands), ``lookalike.native``
(the compiled top-k kernel), ``lookalike.v1`` (generated gRPC code).
"""

__version__ = "0.1.0"
