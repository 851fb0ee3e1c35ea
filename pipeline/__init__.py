"""Stage scripts: each parses its arguments, checks params.yaml and calls the library in src/."""
