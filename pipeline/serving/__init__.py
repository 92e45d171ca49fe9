"""serving: the web page and JSON API (``./run.sh serve``) over one loaded model."""
