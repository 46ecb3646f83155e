"""Calibration data for INT8: normal images through the runtime preprocessing, and caches."""
