"""Serving many adapters (torch-free): resident adapters per engine, hot swapping under
traffic, fleet size and cost."""
