"""Where runs are kept: the RunStore port and its memory and SQLite adapters, and the archive."""
