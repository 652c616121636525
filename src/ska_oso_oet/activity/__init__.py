"""Scheduling-block activities: resolve "activity X of SBD Y" to a procedure. No Tango, no HTTP."""
