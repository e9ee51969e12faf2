"""madloop: simulate, measure and explain self-consuming training loops of generative models."""

from madloop.experiment import ConfigError, ExperimentConfig, RunResult, run

__all__ = ["ConfigError", "ExperimentConfig", "RunResult", "run"]
__version__ = "0.1.0"
