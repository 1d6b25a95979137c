"""Synthetic tool-use preference data: requests, correct calls, and hard negatives."""
