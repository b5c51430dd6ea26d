"""Settings and database plumbing shared by the API and the worker."""
