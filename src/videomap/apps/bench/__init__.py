"""Benchmarks behind ``videomap bench ...`` (thin scripts in ``benchmarks/`` call the same functions)."""
