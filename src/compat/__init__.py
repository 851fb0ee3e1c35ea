"""Every use of a library's private API, one module per library (MLflow's scoring server apart, in
mlflow_scoring.py: only the served model uses it); tests/test_compat.py fails, naming the package
and its version, when an internal one of them relies on changes."""
