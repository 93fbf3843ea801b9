"""videomap.apps: the applications built on the library, kept apart from it.

* :mod:`~videomap.apps.cli`: the ``videomap`` console script, one subcommand per job;
* :mod:`~videomap.apps.commands`: ``pretrain``, ``finetune``, ``eval``, ``extract`` and ``predict``: argument
  parsing and summaries around the library's ``run_*`` functions in :mod:`videomap.train`;
* :mod:`~videomap.apps.convert`: ``videomap convert`` around :mod:`videomap.models.convert`;
* :mod:`~videomap.apps.demo`: the main job (data, run, report);
* :mod:`~videomap.apps.ablate`: the ablation study;
* :mod:`~videomap.apps.bench`: the benchmarks (``videomap bench ...``, ``benchmarks/*.py``).

Nothing in the library imports from here (``tests/test_layering.py`` checks it).
"""
