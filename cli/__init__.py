"""The `apsis` command-line client: talks to the server's REST API over HTTP."""
