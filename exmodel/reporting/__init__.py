"""Reporting: run records, results aggregation, tables and plots. It reads results; training never calls it."""
