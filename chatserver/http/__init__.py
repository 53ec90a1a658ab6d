"""The HTTP layer: Starlette routes, SSE, auth, and the mapping of error codes to statuses.
With `chatserver.app`, the only code that imports Starlette."""
