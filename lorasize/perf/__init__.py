"""The step-time model (torch-free): FLOPs, dequantization and the fitted utilisation."""
