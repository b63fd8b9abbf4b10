"""Conformance kit for vtprune strategies (see docs/conformance.md)."""
