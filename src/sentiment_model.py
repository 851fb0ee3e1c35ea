"""The raw-text model as MLflow "models from code": logged as this file, so nothing is unpickled on load."""

import mlflow

from src.serving import SentimentModel

mlflow.models.set_model(SentimentModel())
