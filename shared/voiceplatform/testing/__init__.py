"""Fakes with knobs and contract test bases that ship with the product.

The FreeSWITCH peer and the embedded servers are not here: they are the development stack,
``voiceplatform_devstack`` (shared/devstack, docs/devstack.md), which production images do not install.
"""
