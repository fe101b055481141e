"""Schedules: for each algorithm, what every CTA loads, computes and stores, in order (pure data)."""
