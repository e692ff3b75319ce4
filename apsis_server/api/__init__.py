"""The HTTP API: REST, feeds, JSON views, OpenAPI, the gate and tokens, metrics."""
