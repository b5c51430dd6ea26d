"""simprune REST service: FastAPI app (``app.main:create_app``), settings, database models, storage."""
