"""Rule actions (``pgsql:<name>``, ``http:<name>``) and the buffer/batch/retry machinery they share."""
