"""adstack: autonomous-driving perception and planning stack (shared core)."""

__version__ = "0.1.0"
