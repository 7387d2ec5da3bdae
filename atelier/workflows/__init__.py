"""Workflows: DAGs of steps, each run as a task."""
