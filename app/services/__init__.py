"""Service functions the routes and the worker call (engine access, auth, queueing, uploads)."""
