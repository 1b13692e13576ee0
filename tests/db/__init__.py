"""Tests of the persistence floor (overread.db): schema versions and migrations."""
