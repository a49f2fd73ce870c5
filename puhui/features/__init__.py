"""Point-in-time features: read the raw tables as of a date, aggregate, store."""
