"""lm-eval task definitions (YAML) and the functions they name (utils.py)."""
