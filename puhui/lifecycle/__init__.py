"""What every registered model shares: gates as data and their verdict (issue 12)."""
