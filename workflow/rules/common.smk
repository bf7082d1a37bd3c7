# Helper functions shared by the rules; no rules here.


def preset():
    """The validated preset name: 'smoke', 'cpu' or 'paper' (config/README.md)."""
    return config["preset"]
