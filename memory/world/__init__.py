"""The world model: backbones, mosaics and their RGB-D encoding, the conditioning they read, loading and rollout."""
