"""The workflow engine, one concern a module.

Definitions (the rule files): conditions.py (entry filters, branch cases, goal states),
steps.py (what a step does and checks), definitions.py (a workflow: trigger, entry,
steps, exits, goal), policies.py (what every workflow shares), lint.py (what a workflow
and the set must hold), library.py (loading the set).

The engine (pure): runbook.py (a contact's runs, as the table keeps them), effects.py
(what a call decides), contact_time.py (the contact's clock), passes.py (one call into
the engine), actions.py (send, notify, task, update), membership.py (entering,
collisions, leaving), waits.py (wait, wait_until, wait_for), engine.py (taking steps).

Around it: runs.py (the contact stage's table of runs and their timers, and metrics),
simulation.py (``switchboard workflows simulate``)."""
