"""The cluster model: memory, runtime and GPU requests per job, the pre-flight plan
(no torch; imports only `spec`)."""
