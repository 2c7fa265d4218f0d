"""The views: each renders one ``agent.snapshot.Snapshot`` and nothing else.

- ``report``: what ``/status`` and ``check`` show, arranged once (summary, needs attention,
  failures grouped by cause, business state apart, rate windows, pauses);
- ``status``: the ``/status`` HTML page (Jinja2 template under ``templates/``);
- ``check``: the ``check`` command's table and JSON;
- ``support``: ``/support`` and the ``support-bundle`` text (the 5XX support case).

``/metrics`` is rendered by ``agent.metrics`` from the same snapshot. No view imports the wiring
(``agent.runtime``, ``agent.server``, ``agent.cli``) or does I/O, so any of them may render off
the event loop.
"""
