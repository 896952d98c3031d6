"""Devices: the mesh, batch and FSDP shardings, multi-host start-up, compute and param dtypes."""
