"""MLflow at the edges, one module per concern.

- store: where runs are stored (MLFLOW_TRACKING_URI, else mlflow.db in the repository); connect.
- lock_retries: a SQLite store shared by several processes loses nothing (locked calls are retried).
- dead_runs: no run stays RUNNING after its process died; the next connect marks it KILLED.
- lineage: a run's readable name and its git and DVC tags.
- runs: the run's life (it always ends in a true state) and the record naming it for later stages.
- artifacts: params, text files without passwords, and the Keras model, logged into a run.
"""
