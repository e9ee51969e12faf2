"""Figures and the HTML report, made from run directories (never from the loop itself)."""
