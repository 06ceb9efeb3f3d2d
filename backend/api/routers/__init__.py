"""One router per area, each with its full path prefix (the API's version included), so
that a route's template is its whole path: the audit log and the metrics label by it."""

API_PREFIX = "/api/v1"
