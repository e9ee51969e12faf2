"""``madloop reproduce``: the field's headline results, one command each, beside the papers'.

A study is one TOML file in ``madloop/studies/`` (:mod:`madloop.reproduce.spec`): an experiment
config, its quick-mode overrides and declarative checks. :func:`reproduce` runs studies with
madloop's own ``run`` and writes a reproduction directory (:mod:`madloop.reproduce.runner`);
``madloop report DIR`` shows its comparison table first. Measures and closed-form references are
looked up by name (:data:`MEASURES`, :data:`FORMULAS`), never imported by a study file.
"""

from madloop.reproduce.formulas import FORMULAS, Formula, register_formula
from madloop.reproduce.measures import MEASURES, Measure, register_measure
from madloop.reproduce.runner import Reproduction, StudyOutcome, reproduce, run_study
from madloop.reproduce.spec import Study, load_study, parse_study, study_names

__all__ = [
    "FORMULAS",
    "MEASURES",
    "Formula",
    "Measure",
    "Reproduction",
    "Study",
    "StudyOutcome",
    "load_study",
    "parse_study",
    "register_formula",
    "register_measure",
    "reproduce",
    "run_study",
    "study_names",
]
