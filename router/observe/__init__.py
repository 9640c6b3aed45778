"""What operators and analysts read: the routing log and its records, Prometheus metrics,
upstream health."""
