"""Everything that faces the network and the operator: front ends, router, control API, records."""
