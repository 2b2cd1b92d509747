"""OpenAI's speech API as a dialect of the generation API (speech.py)."""
