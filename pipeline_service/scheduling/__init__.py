"""Scheduling: DST-correct fire times, the scheduler and backfill activities."""
