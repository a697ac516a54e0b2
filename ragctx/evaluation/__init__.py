"""NQ-20 loading and answer metrics, shared by training (library) and the bench (interface)."""
