"""gRPC transport: servicers, error mapping and auth. The only layer that imports grpc."""
