"""hdmap stage."""
