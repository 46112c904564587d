"""Sub-commands of ``enet-seg``; each module has ``add_arguments(parser)`` and ``run(args)``.

Command modules only parse arguments and call library code: keep heavy imports inside ``run``.
"""
