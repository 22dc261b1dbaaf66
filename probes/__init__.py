"""probes: can a Transformer and a state-space model learn to find something in their context?"""

__version__ = "0.1.0"
