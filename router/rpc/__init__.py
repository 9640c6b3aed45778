"""gRPC for the public side (contract section 12): a listener that hands every call to one
handler as raw message bytes, and one channel per version address for the way up. Like
`http/`, it knows nothing of models; it is imported only when a table asks for gRPC
(grpcio is the `grpc` extra)."""
