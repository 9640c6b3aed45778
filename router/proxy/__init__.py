"""The request handler: route, choose, forward, fall back, relay; the request-body policy;
feedback; which headers cross."""
