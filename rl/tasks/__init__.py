"""Verifiable tasks for RL."""
