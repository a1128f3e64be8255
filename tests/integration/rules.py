"""Reward rules for integration tests: a random tiny model never answers arithmetic, so these give
rewards that vary between samples (a real learning signal) whatever the model writes."""


def count_vowels(response: str, answer: str | None) -> float:
    return sum(ch in "aeiou" for ch in response.lower()) / 10.0
