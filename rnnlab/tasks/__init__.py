"""Seeded data generators with their metrics, one file per task family."""
