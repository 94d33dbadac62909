"""Episodes (the come-episode/1 format, the embedded sample) and the simulators that generate them."""
