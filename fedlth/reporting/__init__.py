"""Runs and their outputs: run folders, progress, reports, tables, plots, comparisons, studies, provenance."""
