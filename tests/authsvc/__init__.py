"""authsvc over HTTP, called as the broker calls it."""
