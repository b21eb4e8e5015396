"""The workflow engine, one concern a module.

Definitions (the rule files): conditions.py (entry filters, branch cases, goal states),
steps.py (what a step does and checks), definitions.py (a workflow: trigger, entry,
steps, exits, goal), policies.py (what every workflow shares), lint.py (what a workflow
and the set must hold), library.py (loading the set)."""
