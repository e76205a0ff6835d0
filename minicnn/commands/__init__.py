"""The ``minicnn`` subcommands and train options that belong to one technique each.

``minicnn/cli.py`` holds the core commands (train, evaluate, predict, info)
and the shared building blocks (``add_train_arguments``, ``prepare_run``,
``run_fit``). Each technique — transfer learning, pruning, quantization,
attacks, tuning, distributed training — keeps its command-line part in a
module here, listed in ``cli.COMMANDS`` (a subcommand: ``add_parser``) and/or
``cli.TRAIN_PLUGINS`` (options of ``minicnn train``: ``add_train_arguments``,
``configure_model``, ``configure_training``), so that each reads on its own
and ``cmd_train`` stays the same with or without it.
"""
