"""`kvlab bench`: a load generator for any URL speaking kvlab's REST API or the Go-compatible one.

`stats` holds the pure parts (the read:write mix, latency percentiles, error tallies, the report);
`load` drives the target over `http_client` connections, one per worker, and fills them in.
"""
