"""Tables of malformed inputs per node family, collected by tests/test_malformed_inputs.py."""
