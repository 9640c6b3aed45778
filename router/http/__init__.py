"""HTTP/1.1 for the public port (server, connection phases, flow control, limits, requests
and answers as values) and, in `client/`, for the versions behind it. Imports nothing of
the router's: what it needs from above comes through `hooks.Hooks`."""
