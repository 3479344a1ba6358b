"""Pieces shared by the driver and the replicas: storage access and the retry policy."""
