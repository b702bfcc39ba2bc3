"""gRPC front end: translates the Open Inference Protocol's gRPC form to the protocol-neutral types."""
