"""Shared test set-up. The svmval plugin itself is loaded through its entry point."""

pytest_plugins = ["pytester"]
