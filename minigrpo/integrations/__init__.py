"""Recording minigrpo traces from other trainers (``minigrpo.integrations.trl``: TRL's GRPOTrainer).

The integrations import their trainer library lazily: ``import minigrpo`` never needs TRL.
"""
