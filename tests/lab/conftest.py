"""The lab harness's own tests use the shared fixtures of tests/conftest.py (make_lab)."""
