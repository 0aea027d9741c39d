"""Helpers every test shares: problem+json checks, deadline polling, required services, and
users and jobs made the way the service makes them."""
