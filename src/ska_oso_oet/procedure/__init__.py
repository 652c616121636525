"""Script execution engine: procedures run in child processes. No Tango, no HTTP."""
