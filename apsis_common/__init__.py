"""Vocabulary shared by the Apsis server, agent and CLI."""

__version__ = "0.1.0"
