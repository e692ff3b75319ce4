"""The pure core: jobs, schedules, programs, runs and their lifecycle; no I/O."""
