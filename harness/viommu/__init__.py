"""svmval: harness/viommu."""
