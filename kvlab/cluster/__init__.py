"""The real-process driver's supervisor: start, stop and break local clusters."""
