"""imdb-lstm: the library behind the pipeline stages in pipeline/."""
