"""Names of the gRPC metadata keys and HTTP headers Win-Train reads or writes, in one place."""

from __future__ import annotations

# Correlates one request across gateway, services and logs: an HTTP header and gRPC metadata.
REQUEST_ID_KEY = "x-request-id"
# gRPC: the API key, as `Bearer <key>`, and the HTTP header of the same name.
AUTHORIZATION_KEY = "authorization"
# HTTP response header naming JSON keys the gateway ignored.
IGNORED_FIELDS_HEADER = "X-Wintrain-Ignored-Fields"
