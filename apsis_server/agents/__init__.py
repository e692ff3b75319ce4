"""Talking to agents: client, queues, events endpoint, facts, reconciling, registry."""
