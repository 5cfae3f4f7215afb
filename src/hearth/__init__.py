"""Hearth: sign AI coding CLIs into subscriptions and run them in microVMs."""
