"""hitlflow: workflows that pause for people, resume on their answer, and remember everything."""

__version__ = "0.1.0"
