"""Where replicas keep their records: SQLite on disk, or memory for the simulator."""
