"""Training of the embedded default world model on simulator episodes."""
