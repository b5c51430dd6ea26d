"""The Celery worker: ``worker.celery_app`` (configuration) and ``worker.tasks`` (the thin job task)."""
