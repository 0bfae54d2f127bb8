"""The tenant secret store: encrypted at rest, resolved only inside activities."""
