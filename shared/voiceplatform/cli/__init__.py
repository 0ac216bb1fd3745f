"""The `vp` command: `vp up` runs the platform, `vp call` plays a recorded caller into it."""
