"""Integrations with evaluation harnesses and serving engines (each an optional extra).

- ``lmms_eval``: an lmms-eval model plugin (``--model vtprune``), extra ``vtprune[lmms]``.
"""
