"""svmval: workloads."""
