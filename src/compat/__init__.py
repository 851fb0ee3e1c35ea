"""Every use of a library's private API, one module per library; tests/test_compat.py fails, naming
the package and its version, when an internal one of them relies on changes."""
