"""Fixtures for the agents tests."""

import pytest


@pytest.fixture
def forwards(tiny):
    """Record (rows, tokens per row) of every forward pass of the tiny model: prefill has tokens > 1."""
    shapes = []
    hook = tiny.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    yield shapes
    hook.remove()
