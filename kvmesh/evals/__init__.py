"""Benchmarks: tasks, answer extraction, sandboxed code execution, the runner and reports."""
