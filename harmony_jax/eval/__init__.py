"""Synchronisation metrics for generated and real sounding videos."""
