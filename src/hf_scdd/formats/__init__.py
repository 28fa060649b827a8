"""On-disk formats: the distilled-set folder (``distilled_set``: parquet shards, image codec, unit files,
grid) and the soft labels stored beside it (``soft_labels``)."""
