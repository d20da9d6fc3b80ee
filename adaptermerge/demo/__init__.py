"""The end-to-end demo: train three task adapters, merge them every way, evaluate, pick a winner.

    from adaptermerge.demo import DemoConfig, run_demo
    result = run_demo(DemoConfig(output="demo", quick=True))
"""

from .plan import DemoConfig
from .run import DemoResult, run_demo

__all__ = ["DemoConfig", "DemoResult", "run_demo"]
