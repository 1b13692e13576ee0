"""Tests of the gateway (overread.service)."""
