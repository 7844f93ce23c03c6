"""Read models rebuilt from the services' events: thread status, audit trail, analytics."""
