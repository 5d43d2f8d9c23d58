from opchain.cli import entrypoint

entrypoint()
