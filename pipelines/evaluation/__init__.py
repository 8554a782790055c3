"""Scores of predictions against labels (Dice, HD95, surface Dice) and overlay pictures."""
