"""Offline RL from a fixed dataset: pessimism (LCB) vs plug-in and behaviour cloning."""
