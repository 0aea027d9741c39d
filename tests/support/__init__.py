"""Helpers every test shares: problem+json checks, deadline polling, required services."""
