"""MLflow at the edges, one module per concern.

- store: where runs are stored (MLFLOW_TRACKING_URI, else mlflow.db in the repository); connect.
- lock_retries: a SQLite store shared by several processes loses nothing (locked calls are retried).
- dead_runs: no run stays RUNNING after its process died, or `mlflow run` left it; connect marks it KILLED.
- lineage: a run's readable name and its git and DVC tags.
- runs: the run's life (it always ends in a true state) and the record naming it for later stages.
- artifacts: params, text files without passwords, and the Keras model, logged into a run.
- metrics: the per-epoch record as MLflow metrics, ending on the kept epoch's; timings under system/.
- inputs: the train, validation and test arrays as the run's datasets (DVC path, md5).
- registry: imdb-sentiment's versions, their tags, and the champion alias that predict and serve use.
"""
