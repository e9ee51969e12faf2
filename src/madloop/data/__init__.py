"""Real data: generation 0 of every loop. Each source registers a config class and a builder."""

from madloop.data.base import DATA_SOURCES, DataSpec, build_source, load_sources, register_source

__all__ = ["DATA_SOURCES", "DataSpec", "build_source", "load_sources", "register_source"]
