"""losslab's ``hydra/launcher=ray``: Hydra takes launchers from the ``hydra_plugins`` namespace."""
