"""Oracles: what a correct system must show, computed in plain Python from what a test sent."""
