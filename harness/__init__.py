"""svmval: harness."""
