"""The Apsis agent: runs programs for the server and reports facts about them.

Kept free of imports: the daemon forks its spawner before importing anything heavy.
"""
