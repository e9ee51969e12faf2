"""madloop: simulate, measure and explain self-consuming training loops of generative models."""

from madloop.experiment import ConfigError, ExperimentConfig, RunResult, run
from madloop.sweep import SweepResult, sweep

__all__ = ["ConfigError", "ExperimentConfig", "RunResult", "SweepResult", "run", "sweep"]
__version__ = "0.1.0"
