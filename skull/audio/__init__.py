"""Audio: WAV handling, the loudness -> jaw mapping, microphone and speaker."""
