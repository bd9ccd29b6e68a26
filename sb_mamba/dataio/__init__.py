"""Data: audio I/O with clear errors, dataset preparation, dynamic mixing."""
