"""svmval: host_setup."""
