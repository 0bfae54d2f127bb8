"""Lifecycle events: reading the outbox as CloudEvents, and the Kafka relay."""
