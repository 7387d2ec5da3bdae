"""Monitoring: task/workflow views across the fleet, queue and worker figures, metrics."""
