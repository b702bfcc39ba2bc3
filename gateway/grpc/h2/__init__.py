"""The native gRPC transport: HTTP/2 and gRPC framing of our own, running grpc.aio-style servicers."""
