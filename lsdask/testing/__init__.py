"""Test and benchmark helpers (data generators). Not imported by the pipeline."""
