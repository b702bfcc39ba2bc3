"""Everything that faces the network and the operator: front ends, router, control API, records."""

__version__ = "0.1.0"
