"""The ``minicnn`` command.

* ``commands.py``    — the core commands (train, evaluate, predict, info), the parser, and the building
  blocks every command shares, public: :class:`CLIError`, :func:`prepare_run`, :func:`run_fit`,
  :func:`add_train_arguments`, :func:`load_checkpoint_file`, :func:`model_from_checkpoint`;
* ``model_shape.py`` — ``minicnn train --dropout/--kernel-size`` (rebuilds the model);
* ``from_torch.py``  — ``minicnn from-torch PROGRAM.py``: a PyTorch program, its imports rewritten, run on minicnn.

Each technique keeps its command-line part in its own folder (``minicnn/compress/prune_cli.py``,
``minicnn/quant/cli.py``, ...), listed in ``commands.COMMANDS`` (a subcommand: ``add_parser``) and/or
``commands.TRAIN_PLUGINS`` (options of ``minicnn train``: ``add_train_arguments``, ``configure_model``,
``configure_training``), so that each reads on its own and ``cmd_train`` stays the same with or
without it. Techniques import from ``commands``; ``commands`` finds them by name only (no import circle).
"""
from .commands import (CLIError, add_train_arguments, load_checkpoint_file, main, make_parser,
                   model_from_checkpoint, prepare_run, run_fit)

__all__ = ["main", "make_parser", "CLIError", "add_train_arguments", "prepare_run", "run_fit",
           "load_checkpoint_file", "model_from_checkpoint"]
