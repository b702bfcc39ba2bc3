"""Records: Prometheus metrics, per-version latency, sampled payloads."""
