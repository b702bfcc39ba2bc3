"""Everything that executes models: repository, ONNX Runtime sessions, execution providers, batching.

Rules of this package: it imports nothing from ``gateway``, grpc, aiohttp or prometheus_client.
"""
