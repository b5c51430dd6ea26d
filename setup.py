"""Package layout that pyproject.toml cannot express: the migration scripts live in the top-level ``alembic/``
folder of the repository (no ``__init__.py``, so it never shadows the alembic library) and are installed as
``app/migrations`` (``app.core.db.migrations_dir`` finds them in either place). Everything else is in
pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["simprune*", "app*", "worker*"]), "app.migrations", "app.migrations.versions"],
    package_dir={"app.migrations": "alembic"},
)
