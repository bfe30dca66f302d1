"""The request paths a job can take, and the seam they share (`paths.base`)."""
