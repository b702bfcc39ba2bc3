"""The control plane: durable endpoint state, its authenticated HTTP API and the audit trail.

It meets the data plane at exactly one place: ``EndpointController`` calls ``router.rebuild(specs)`` after a
change is durable. Nothing here runs on the request path.
"""
