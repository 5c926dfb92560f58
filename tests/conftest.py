import pytest
import torch


@pytest.fixture
def gen():
    """A fresh generator per test, seeded from the OS: every run draws new inputs."""
    g = torch.Generator()
    g.seed()
    return g
