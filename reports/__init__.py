"""svmval: reports."""
