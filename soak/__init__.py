"""`make soak`: meshgate under a fixed request rate while its policy and certificate change."""
