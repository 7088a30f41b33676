"""The wires: gRPC servicers (``*_servicer.py``, ``grpc_server.py``), the PAI-compatible HTTP
gateway (``http_gateway.py``), auth, admission, TLS, metrics and error mapping.

The only layer that imports grpc or the HTTP framework. Every handler calls one method of
``server.core.service.LookalikeService``; nothing here imports ``server.core.backends`` or
touches ``service.catalog``. A new RPC is a proto message, a servicer method and, if the
operation is new, a service method.
"""
