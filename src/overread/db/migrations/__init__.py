"""Alembic migrations of overread's schema, one revision per file in ``versions/``.

Run from code by :mod:`overread.db.schema` (``overread db upgrade``), never through
an ``alembic.ini``. Revision ids are four-digit sequence numbers. A revision is
written by hand against the models; the test suite compares the migrated schema with
the models' metadata, so a model change without its revision fails it.
"""
