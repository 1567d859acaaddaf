"""svmval: guest_image."""
