"""`mapo-data build` (being written)."""
