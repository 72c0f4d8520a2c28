"""Data larger than memory: Dask, Parquet and chunked pandas fits in two passes."""
