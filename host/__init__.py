"""The host ("Galactus"): hears the skull's question, looks at its snapshot, writes a reply and
speaks it back with a jaw track."""
