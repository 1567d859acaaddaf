"""Checks that judge a run: QI completeness, translations, page requests, faults."""
