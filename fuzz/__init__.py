"""Fuzzing harnesses (see fuzz_container.py); also imported by tests/test_fuzz.py."""
