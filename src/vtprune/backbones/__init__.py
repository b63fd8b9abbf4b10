"""Backbone adapters: run pruning schedules inside real models."""
