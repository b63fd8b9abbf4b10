"""lmms-eval model plugin: ``lmms-eval --model vtprune`` (optional extra ``vtprune[lmms]``).

lmms-eval >= 0.7 loads plugin models from the entry-point group ``lmms_eval.models``;
vtprune's entry point ``vtprune = vtprune.integrations.lmms_eval.registration:manifest``
names :class:`~vtprune.integrations.lmms_eval.model.VTPrune`. Importing ``.model`` needs
lmms-eval installed; ``.families``, ``.report`` and ``.scenes_task`` need only vtprune (and
``report.publish`` lmms-eval). See docs/evaluation.md.
"""
