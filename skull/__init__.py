"""The talking skull's agent ("Mr. Bones") and the code it shares with the host."""
__version__ = "0.1.0"
