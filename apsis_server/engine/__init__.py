"""The engine: owns the unfinished runs; applies their events, writes, publishes, acts."""
