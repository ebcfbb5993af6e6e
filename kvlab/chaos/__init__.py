"""The chaos lab: record histories of client operations and check them for consistency."""
