"""Product recommender: which financial product to offer each customer (issue 12)."""
