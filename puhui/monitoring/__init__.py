"""Model monitoring, service effect, early warning and the HTML report (`puhui run report`)."""
