"""heavy: the heavy-mode research service. Its version is the distribution's (pyproject.toml reads it from here), so
`heavy --version`, the API's /v1/version and a bug report name the code that runs, installed or not."""

__version__ = "0.1.0"
