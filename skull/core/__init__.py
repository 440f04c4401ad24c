"""What the skull and the host share, importing neither side: the wire protocol (no I/O), the
one loudness-to-jaw mapping, PCM/WAV helpers, the one validator for config and messages, the
event bus, the errors and the bundled sample data.

Import direction: ``skull.core`` <- ``skull`` (the agent in the prop), ``skull.core`` <- ``host``;
only ``skull.cli`` and ``skull.demo`` import both sides.
"""
