"""What a run leaves: logs, metrics files, pictures, the report, the model summary, MFU."""
