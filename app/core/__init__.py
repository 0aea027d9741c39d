"""Helpers every part may use (storage, providers, services, entry points): no app imports."""
