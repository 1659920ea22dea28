"""Offline training of quantized LightGCN recommenders and export of servable bundles."""
