"""pytest plugin of the conformance kit; must not import torch at load time."""
