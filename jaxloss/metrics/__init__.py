"""Metrics: top-k and balanced accuracy, expected calibration error, reliability diagrams."""
