"""Search engine: the study driver and the backends that execute its trials (Ray Tune, local)."""
